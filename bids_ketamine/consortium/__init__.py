"""Consortium group level from features that left their sites without images (ENIGMA's way).

Each site runs the participant level on its own images and exports what may leave it (``export``): per-participant
feature and QC tables with their sidecars, stripped of fields that identify a person, and the site's run records,
with a manifest of checksums. The coordinating site pools several exports (``pool``): it verifies the checksums,
checks that the features are comparable (``compat``), copies them into its output folder and runs the usual group
level there, with a ``participants.tsv`` that holds the design (``site`` drives ComBat as in any other run).
"""
