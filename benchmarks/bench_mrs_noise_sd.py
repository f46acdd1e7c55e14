"""Noise level the fMRS fits use versus the generator's, on the same block averages (issue 16, SE calibration).

Run: .venv/bin/python benchmarks/bench_mrs_noise_sd.py [seed] [sessions]

Ground truth: each session is drawn twice from copies of one random generator, with and without the generator's
white coil noise (``synthetic.mrs.NOISE_SD``), so their difference is exactly the noise. The noise SD of a block
average (real part of its unnormalised FFT, the fits' data units) is then ``sqrt(sum_c |w_c|^2 s_c^2 N / n_b)`` with
the preprocessing's coil weights ``w_c``, the per-coil noise SD ``s_c`` (measured on the noise itself), N points and
n_b kept transients (alignment, eddy-current and phase corrections are unit-modulus factors and leave it unchanged);
the FFT of the combined, averaged noise itself is printed as a check. Compared with ``FitResult.noise_sd`` of
``fit_spectrum`` on every block and ``DynamicFitResult.noise_sd`` of the joint fit, and prints the residual degrees
of freedom and the baseline's effective dimension.
"""
import os
os.environ.setdefault("OMP_NUM_THREADS", "1")
import copy  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402
from bids_ketamine.synthetic import mrs  # noqa: E402
from bids_ketamine.synthetic.mrs import FmrsSimulator, SLOPES  # noqa: E402
from bids_ketamine.spectroscopy import preprocess as pp  # noqa: E402
from bids_ketamine.spectroscopy.fit import fit_spectrum  # noqa: E402
from bids_ketamine.spectroscopy.dynamic_fit import fit_dynamic  # noqa: E402

sim = FmrsSimulator()
rng = np.random.default_rng(int(sys.argv[1]) if len(sys.argv) > 1 else 16)
n_ses = int(sys.argv[2]) if len(sys.argv) > 2 else 4
slopes = list(SLOPES.values())
rows = []
for i in range(n_ses):
    water_amp = sim.water_amplitude({"gm": 0.6, "wm": 0.3, "csf": 0.1})
    subject = sim.subject(rng)
    rc = copy.deepcopy(rng)
    data, ref, r0 = sim.session(rng, subject, slopes[i % 4], water_amp)
    nsd = mrs.NOISE_SD
    mrs.NOISE_SD = 0.0
    clean, _, _ = sim.session(rc, subject, slopes[i % 4], water_amp)
    mrs.NOISE_SD = nsd
    noise = data - clean
    pre = pp.preprocess_svs(data, dwell_time=mrs.DWELL, spectrometer_frequency=mrs.SPECTROMETER_MHZ, water=ref)
    blocks = pp.fmrs_blocks(data.shape[1], sim.repetition_time, sim.onset_seconds, mrs.BLOCK_SECONDS)
    avgs, counts = pp.block_averages(pre.transients, pre.keep, blocks)
    w = pre.coil_weights
    nz = np.conj(noise) if pre.conjugated else noise
    comb_noise = pp.combine_coils(nz, w)
    N = data.shape[2]
    coil_sd = np.sqrt((np.abs(noise) ** 2).mean(axis=(1, 2)) / 2)  # real-part SD per coil
    dyn = fit_dynamic(avgs, mrs.DWELL, mrs.SPECTROMETER_MHZ, sim.basis, block_labels=blocks.labels,
                      n_transients=counts, block_minutes=np.arange(len(counts)) * 4.0 - 6)
    for b, lab in enumerate(blocks.labels):
        sel = (blocks.index == lab) & pre.keep
        nb = comb_noise[sel].mean(axis=0)
        true_emp = np.fft.fft(nb).real.std()
        true_an = np.sqrt(np.sum(np.abs(w) ** 2 * coil_sd ** 2) * N / sel.sum())
        fit = fit_spectrum(avgs[b], mrs.DWELL, mrs.SPECTROMETER_MHZ, sim.basis)
        rows.append((true_an, true_emp, fit.noise_sd, dyn.noise_sd[b], fit.extras["degrees_of_freedom"],
                     fit.extras["baseline_effective_dimension"], dyn.degrees_of_freedom))
    print(i, np.mean([r[2] / r[0] for r in rows[-6:]]), np.mean([r[3] / r[0] for r in rows[-6:]]), flush=True)
a = np.array(rows)
print("empirical/analytic truth", (a[:, 1] / a[:, 0]).mean())
print("block-wise fit noise_sd / truth: mean %.4f sd %.4f" % ((a[:, 2] / a[:, 0]).mean(), (a[:, 2] / a[:, 0]).std()))
print("dynamic fit noise_sd / truth: mean %.4f sd %.4f" % ((a[:, 3] / a[:, 0]).mean(), (a[:, 3] / a[:, 0]).std()))
print("dof block-wise", a[:3, 4], "baseline dim", a[:3, 5], "dyn dof", a[0, 6])
