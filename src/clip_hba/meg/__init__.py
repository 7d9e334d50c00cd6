"""MEG RDMs: the HDF5 store, importers, MNE/BIDS epochs -> RDMs, simulated participants.

- `clip_hba.meg.config`: `EpochsConfig`, `BidsEpoching`, `SimulationConfig`.
- `clip_hba.meg.store`: `RDMStore` (streaming reads), `TimeRDMs`.
- `clip_hba.meg.writer`: `StoreWriter` (atomic, content-hashed), export to the release format.
- `clip_hba.meg.io`: importers of the THINGS-MEG release ``.mat`` and ``.npy``, format dispatch.
- `clip_hba.meg.epochs`: MNE epochs -> time-resolved RDMs.
- `clip_hba.meg.crossval`: cross-validated RDMs from epochs (crossnobis, closed-form pairwise LDA).
- `clip_hba.meg.bids`: BIDS datasets (mne-bids) -> RDMs.
- `clip_hba.meg.simulate`: simulated participants with a known truth.
- `clip_hba.meg.quality`: how well each participant agrees with the others.
"""

from clip_hba._lazy import lazy_names
from clip_hba.meg.config import (
    QUALITY_WINDOW_MS,
    BidsEpoching,
    EpochsConfig,
    SimulationConfig,
)

_MODULES = {
    "RDMStore": "store",
    "StoreWriter": "writer",
    "TimeRDMs": "store",
    "open_store": "store",
    "unknown_concepts": "store",
    "check_mat_name": "writer",
    "check_out_file": "writer",
    "export_things_mat": "writer",
    "sidecar_path": "writer",
    "warn_unknown_concepts": "writer",
    "write_things_mat": "writer",
    "FORMATS": "io",
    "THINGS_MEG_TIMES_MS": "io",
    "guess_format": "io",
    "import_npy": "io",
    "import_rdms": "io",
    "import_things_mat": "io",
    "resolve_times": "io",
    "ConditionMeans": "epochs",
    "bin_times": "epochs",
    "bin_means": "epochs",
    "check_finite_epochs": "epochs",
    "time_bins": "epochs",
    "concept_order": "epochs",
    "condition_rdms": "epochs",
    "correlation_rdms": "epochs",
    "decoding_rdms": "epochs",
    "crossnobis_rdms": "crossval",
    "crossval_folds": "epochs",
    "fold_covariances": "crossval",
    "lda_rdms": "crossval",
    "epochs_rdms": "epochs",
    "import_bids": "bids",
    "import_epochs": "epochs",
    "COMPONENTS": "simulate",
    "participant_quality": "quality",
    "FLAG_RATIO": "quality",
    "leave_one_out_correlations": "quality",
    "component_rdms": "simulate",
    "simulate_meg": "simulate",
    "time_course": "simulate",
}
__getattr__ = lazy_names(__name__, _MODULES)
__all__ = [
    "COMPONENTS",
    "FLAG_RATIO",
    "FORMATS",
    "QUALITY_WINDOW_MS",
    "THINGS_MEG_TIMES_MS",
    "BidsEpoching",
    "ConditionMeans",
    "EpochsConfig",
    "RDMStore",
    "SimulationConfig",
    "StoreWriter",
    "TimeRDMs",
    "bin_means",
    "bin_times",
    "check_finite_epochs",
    "check_mat_name",
    "check_out_file",
    "component_rdms",
    "concept_order",
    "condition_rdms",
    "correlation_rdms",
    "crossnobis_rdms",
    "crossval_folds",
    "decoding_rdms",
    "epochs_rdms",
    "export_things_mat",
    "fold_covariances",
    "guess_format",
    "import_bids",
    "import_epochs",
    "import_npy",
    "import_rdms",
    "import_things_mat",
    "lda_rdms",
    "leave_one_out_correlations",
    "open_store",
    "participant_quality",
    "resolve_times",
    "sidecar_path",
    "simulate_meg",
    "time_bins",
    "time_course",
    "unknown_concepts",
    "warn_unknown_concepts",
    "write_things_mat",
]
