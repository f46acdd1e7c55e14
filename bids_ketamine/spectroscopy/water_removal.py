"""Residual water: find its lines by Hankel singular value decomposition (HSVD) so the fit can absorb them.

The FID is modelled as a sum of damped complex exponentials (Barkhuijsen et al. 1987, J Magn Reson 73:553): the
signal poles are the eigenvalues of the shift-invariance relation between the leading left singular vectors of the
Hankel data matrix. The strong poles inside the water band are returned; the fit adds their line shapes, with free
complex amplitudes, to its baseline. Nothing is subtracted from the data, so a decomposition that also captured some
metabolite signal in the band cannot remove it: the metabolite basis and the water lines compete inside the fit.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import hankel, svd


def hsvd_components(fid: np.ndarray, n_components: int = 25, n_fit: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Poles ``z`` and complex amplitudes ``a`` with ``fid[n] ~ sum_j a_j z_j^n`` from the first ``n_fit`` points."""
    x = np.asarray(fid, complex)[: min(n_fit, fid.size)]
    rows = x.size // 2
    h = hankel(x[:rows], x[rows - 1:])
    u = svd(h, full_matrices=False, lapack_driver="gesdd")[0][:, :n_components]
    z = np.linalg.eigvals(np.linalg.lstsq(u[:-1], u[1:], rcond=None)[0])
    vander = z[None, :] ** np.arange(x.size)[:, None]
    a = np.linalg.lstsq(vander, x, rcond=None)[0]
    return z, a


def water_poles(fid: np.ndarray, dwell_time: float, central_frequency: float, band_ppm: tuple[float, float],
                ppm_reference: float = 4.65, n_components: int = 25, relative_amplitude: float = 0.05) -> np.ndarray:
    """Decaying HSVD poles centred in ``band_ppm`` whose amplitude is at least ``relative_amplitude`` of the largest
    one there: the lines of residual water."""
    z, a = hsvd_components(fid, n_components)
    ppm = ppm_reference + np.angle(z) / (2 * np.pi * dwell_time) / central_frequency
    sel = (ppm >= band_ppm[0]) & (ppm <= band_ppm[1]) & (np.abs(z) < 1.0)
    if not sel.any():
        return np.zeros(0, complex)
    amp = np.abs(a[sel])
    return z[sel][amp >= relative_amplitude * amp.max()]


def band_peak_ratio(fid: np.ndarray, dwell_time: float, central_frequency: float, band_ppm: tuple[float, float],
                    window_ppm: tuple[float, float], ppm_reference: float = 4.65) -> float:
    """Largest spectral magnitude inside ``band_ppm`` over the largest in ``window_ppm`` outside the band.

    The fit models residual water only when it is there (ratio above a threshold).
    """
    spec = np.abs(np.fft.fftshift(np.fft.fft(fid)))
    ppm = ppm_reference + np.fft.fftshift(np.fft.fftfreq(fid.size, dwell_time)) / central_frequency
    in_band = (ppm >= band_ppm[0]) & (ppm <= band_ppm[1])
    in_window = (ppm >= window_ppm[0]) & (ppm <= window_ppm[1]) & ~in_band
    if not in_band.any() or not in_window.any():
        return 0.0
    return float(spec[in_band].max() / max(spec[in_window].max(), 1e-300))
