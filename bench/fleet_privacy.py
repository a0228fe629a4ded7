"""What differential privacy costs fleet learning in F1, on the simulated non-IID fleet.

The fleet, the desk's initial model and the scoring are those of ``bench/fleet_learning.py``
(``fleet_data``, ``fleet_eval``, ``fleet_learning.per_machine``: each machine's fresh labelled
rows, with its own threshold by the gateway's personalisation rule). Every federated run is
``bench/fleet_rounds.run_federation`` (the gateway's ``run_round``: top-k with error feedback,
signed deltas; the desk's ``tally`` and server step) with one privacy setting:

- ``none``: today's defaults (sample-weighted FedAvg, clip at 3x the median norm);
- ``central``: ``trainer federate --dp-clip C --dp-noise-multiplier z`` (equal weights, every
  update clipped to C, N(0, (zC)^2) on the sum), for each z of ``--central-z``; ε over the
  rounds from the accountant. K = ``--machines`` gateways, so the noise on the mean is zC/K;
  ``--fleet-equivalent N`` also runs the noise a fleet of N gateways would put on the mean at
  the same z (zC/N: the run uses z·K/N), the same ε per gateway: an extrapolation that assumes
  N gateways' mean update looks like these K's;
- ``local``: the round announcement's ``privacy`` (each gateway clips its update to C and adds
  N(0, (zC)^2) before error feedback), for each z of ``--local-z``; ε per gateway over the
  rounds, replace-one (sensitivity 2C).

C is the median L2 norm of the gateways' first-round updates without privacy (measured here
with the same local training; a deployment would take it from an earlier round or a public
fleet, not from the round it protects). Noise is seeded from ``os.urandom`` as on the device
and the desk: each noised setting runs ``--repeats`` times (mean, min, max F1).

    python bench/fleet_privacy.py          # -> bench/results/fleet_privacy.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import machine  # noqa: E402
from fleet_rounds import FleetSettings, run_federation  # noqa: E402

from edge_agent.learn.privacy_config import DevicePrivacy  # noqa: E402
from edge_agent.learn.rounds import RoundAnnouncement  # noqa: E402

CLIP_ONLY_Z = 1e-9  # central_clip_only: the mechanism's aggregation without its noise


@dataclasses.dataclass(frozen=True)
class PrivateFleet(FleetSettings):
    """The fleet's settings with the announcement's local-DP requirement."""
    device_privacy: DevicePrivacy | None = None

    def announcement(self, *args: Any, **kwargs: Any) -> RoundAnnouncement:
        ann = super().announcement(*args, **kwargs)
        return ann.model_copy(update={"privacy": self.device_privacy})


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--machines", type=int, default=8, help="compressors in the fleet (K)")
    ap.add_argument("--history-hours", type=float, default=4.0, help="local history per machine")
    ap.add_argument("--fresh-hours", type=float, default=12.0, help="scored data per machine")
    ap.add_argument("--desk-hours", type=float, default=24.0, help="the desk's reference history")
    ap.add_argument("--epochs", type=int, default=40, help="autoencoder epochs of trainer fit")
    ap.add_argument("--rounds", type=int, default=10, help="federated rounds R")
    ap.add_argument("--local-epochs", type=int, default=2, help="local epochs E per round")
    ap.add_argument("--max-windows", type=int, default=5000, help="windows per local round")
    ap.add_argument("--topk", type=float, default=0.01, help="top-k fraction of the deltas")
    ap.add_argument("--central-z", default="0.5,1,2,4", help="central noise multipliers")
    ap.add_argument("--fleet-equivalent", type=int, default=1000, help="N for the extrapolation")
    ap.add_argument("--local-z", default="0.01,0.1,1", help="local noise multipliers")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each noised setting")
    ap.add_argument("--delta", type=float, default=1e-5, help="delta of every epsilon")
    ap.add_argument("--seed", type=int, default=0, help="profiles and local shuffles")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "fleet_privacy.json")
    return ap.parse_args(argv)


def first_round_norms(g: Any, clients: list[Any], settings: FleetSettings) -> list[float]:
    """L2 norms of each gateway's first local update (dense, before compression)."""
    from edge_agent.learn.local import train_local
    from edge_agent.learn.train_round import training_config

    ann = settings.announcement("r0", g.weights, g.manifest.model_version, settings.local.seed)
    cfg = training_config(ann, settings.budget)
    norms = []
    for c in clients:
        res = train_local(g.weights, c.windows, cfg, g.layers)
        norms.append(float(np.linalg.norm(res.weights.subtract(g.weights).flat().astype(float))))
    return norms


def main(argv: list[str] | None = None) -> dict[str, Any]:
    a = parse(argv)
    from fleet_data import desk_history, make_fleet
    from fleet_eval import load_global
    from fleet_learning import fit_run, machine_windows, per_machine
    from fleet_rounds import Client, fresh_keys

    from edge_agent.learn.accountant import epsilon
    from edge_agent.learn.local import LocalTrainingConfig
    from edge_agent.learn.privacy import local_epsilon
    from trainer.federate.privacy import CentralPrivacy
    from trainer.federate.settings import FederateSettings

    t0 = time.perf_counter()
    hours = {"history_hours": a.history_hours, "fresh_hours": a.fresh_hours}
    machines = make_fleet(a.machines, **hours, seed=a.seed)
    k = len(machines)
    local_cfg = LocalTrainingConfig(epochs=a.local_epochs, max_windows=a.max_windows, seed=a.seed)
    base = PrivateFleet(
        rounds=a.rounds, local=local_cfg, fraction=a.topk, desk=FederateSettings(round_id="r0")
    )
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="fleet-privacy-") as tmp:
        g = load_global(fit_run(desk_history(a.desk_hours), Path(tmp) / "desk", a.epochs))
        windows = machine_windows(g, machines)
        keys = fresh_keys([m.machine_id for m in machines])
        clients = [Client(m.machine_id, windows[m.machine_id], keys[m.machine_id])
                   for m in machines]  # fmt: skip
        norms = first_round_norms(g, clients, base)
        clip = float(np.median(norms))

        def run(name: str, settings: PrivateFleet, repeats: int, **info: Any) -> None:
            f1s, fars, aucs = [], [], []
            for _ in range(repeats):
                fed = run_federation(g.base, g.manifest, clients, settings)
                scored = per_machine(g, fed.weights[-1], machines, windows)["personal"]["mean"]
                f1s.append(scored["f1"])
                fars.append(scored["far"])
                aucs.append(scored["pr_auc"])
            rows.append({
                "mode": name, **info, "f1_mean": round(float(np.mean(f1s)), 4),
                "f1_min": round(min(f1s), 4), "f1_max": round(max(f1s), 4),
                "far_mean": round(float(np.mean(fars)), 4),
                "pr_auc_mean": round(float(np.mean(aucs)), 4), "runs": repeats,
            })  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)

        initial = per_machine(g, g.weights, machines, windows)["personal"]
        run("none", base, 1, epsilon=None)
        # Equal weights and the fixed clip C with (next to) no noise: what the mechanism's
        # aggregation costs before any noise.
        desk = base.desk.model_copy(update={
            "clip_norm": clip, "clip_multiple": None,
            "privacy": CentralPrivacy(clip_norm=clip, noise_multiplier=CLIP_ONLY_Z)})  # fmt: skip
        run("central_clip_only", dataclasses.replace(base, desk=desk), 1, z=CLIP_ONLY_Z,
            epsilon=None)
        for z in [float(x) for x in a.central_z.split(",") if x]:
            eps = round(epsilon([z] * a.rounds, a.delta).epsilon, 3)
            for fleet in (k, a.fleet_equivalent):
                z_run = z * k / fleet
                desk = base.desk.model_copy(update={
                    "clip_norm": clip, "clip_multiple": None,
                    "privacy": CentralPrivacy(clip_norm=clip, noise_multiplier=z_run,
                                              delta=a.delta)})  # fmt: skip
                run("central", dataclasses.replace(base, desk=desk), a.repeats, z=z,
                    fleet=fleet, z_run=round(z_run, 6), noise_std_mean=z * clip / fleet,
                    epsilon=eps)
        for z in [float(x) for x in a.local_z.split(",") if x]:
            asked = DevicePrivacy(clip_norm=clip, noise_multiplier=z)
            eps = round(local_epsilon(z, a.rounds, a.delta).epsilon, 3)
            run("local", dataclasses.replace(base, device_privacy=asked), a.repeats, z=z,
                noise_std=z * clip, epsilon=eps)
    report: dict[str, Any] = {
        "benchmark": "fleet learning with differential privacy: F1 against epsilon (issue 11)",
        "machine": machine(),
        "settings": {kk: (str(v) if isinstance(v, Path) else v) for kk, v in vars(a).items()},
        "parameters": g.weights.size,
        "clip_norm": clip,
        "first_round_update_norms": [round(n, 6) for n in norms],
        "initial_global": {"f1": initial["mean"]["f1"], "pr_auc": initial["mean"]["pr_auc"]},
        "rows": rows,
        "notes": {
            "f1": "mean over machines of point-wise F1 on fresh rows, personalised thresholds; "
            "pr_auc: of stage 2's error (threshold-free)",
            "none": "no privacy: sample-weighted fedavg, clip at 3x the median norm",
            "central_clip_only": "equal weights, fixed clip C, z = 1e-9 (no guarantee)",
            "central": "epsilon per gateway (add/remove one gateway), R rounds composed (RDP), "
            "no subsampling amplification; fleet > machines: noise on the mean of a fleet "
            "of that size at the same z (run with z x K / fleet)",
            "local": "epsilon per gateway for its whole buffer (replace-one, sensitivity 2C), "
            "R rounds composed; the desk's aggregation is today's default",
        },
        "wall_seconds": round(time.perf_counter() - t0, 1),
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=1) + "\n")
    return report


if __name__ == "__main__":
    main()
