"""MEG RDMs: the HDF5 store, importers, MNE/BIDS epochs -> RDMs, simulated participants.

- `clip_hba.meg.config`: `EpochsConfig`, `BidsEpoching`, `SimulationConfig`.
- `clip_hba.meg.store`: `RDMStore` (streaming reads), `TimeRDMs`.
- `clip_hba.meg.writer`: `StoreWriter` (atomic, content-hashed).
- `clip_hba.meg.io`: the THINGS-MEG release ``.mat``, ``.npy``, format dispatch, export.
- `clip_hba.meg.epochs`: MNE epochs -> time-resolved RDMs.
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
    "FORMATS": "io",
    "THINGS_MEG_TIMES_MS": "io",
    "export_things_mat": "io",
    "guess_format": "io",
    "import_npy": "io",
    "import_rdms": "io",
    "import_things_mat": "io",
    "resolve_times": "io",
    "write_things_mat": "io",
    "ConditionMeans": "epochs",
    "bin_times": "epochs",
    "bin_means": "epochs",
    "time_bins": "epochs",
    "concept_order": "epochs",
    "condition_rdms": "epochs",
    "correlation_rdms": "epochs",
    "decoding_rdms": "epochs",
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
    "component_rdms",
    "concept_order",
    "condition_rdms",
    "correlation_rdms",
    "decoding_rdms",
    "epochs_rdms",
    "export_things_mat",
    "guess_format",
    "import_bids",
    "import_epochs",
    "import_npy",
    "import_rdms",
    "import_things_mat",
    "leave_one_out_correlations",
    "open_store",
    "participant_quality",
    "resolve_times",
    "simulate_meg",
    "time_bins",
    "time_course",
    "write_things_mat",
]
