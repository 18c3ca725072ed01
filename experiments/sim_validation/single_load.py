"""The runs of ``run.py --calibrate --calibrate-rates 4,20`` under OUT, calibrated again on the lowest
rate's calibration run alone (a calibration at one load), simulated from it; rows to OUT/single.

    python experiments/sim_validation/single_load.py OUT REQUESTS      # REQUESTS: run.py's --requests
"""

import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as R  # noqa: E402

out = Path(sys.argv[1])
requests = int(sys.argv[2])


class A:
    gpu = False
    contention = None


A.requests = requests
py = sys.executable
dest = out / "single"
dest.mkdir(exist_ok=True)
cores = json.loads((out / "cores.json").read_text())
rows = []
first = None
for topo in ["colocated", "1e1p", "2e1p", "1e1p1d"]:
    prof = out / "profiles" / topo / "profile.json"
    cal = dest / f"{topo}_calibrated.json"
    with open(dest / f"{topo}_calibrate.log", "w") as log:
        subprocess.run(
            [
                py,
                "-m",
                "epd.sim.calibrate",
                f"profile={prof}",
                f"run={out / 'real' / (topo + '_calibration')}",
                f"out={cal}",
            ],
            env=R.env(),
            check=True,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    first = first or cal
    for rate in (4.0, 10.0, 20.0):
        tags = [f"{topo}_r{rate:g}_{rep}" for rep in range(2)]
        runs = {"real": [], "sim": [], "sim_one_profile": [], "sim_cal": [], "sim_cal_one": []}
        for rep, tag in enumerate(tags):
            over = R.overrides(A, topo, rate, rep)
            for kind, p in (("sim_cal", cal), ("sim_cal_one", first)):
                o = dest / kind / tag
                subprocess.run(
                    [py, "-m", "epd.sim", f"hydra.run.dir={o}", f"profile={p}", *over],
                    env=R.env(),
                    check=True,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                runs[kind].append(R.summary(o))
            runs["real"].append(R.summary(out / "real" / tag))
            runs["sim"].append(R.summary(out / "sim" / tag))
            runs["sim_one_profile"].append(R.summary(out / "sim_one_profile" / tag))
        rows.append(R.row(topo, rate, runs, [cores[t] for t in tags], 0.8))
        r = rows[-1]
        print(
            f"{topo} {rate:g}: real {r['real_ttft_mean']:.1f} single-load cal {r['cal_ttft_mean']:.1f} ({100 * r['err_cal_ttft_mean']:+.0f}%) tpot {100 * r['err_cal_tpot_mean']:+.0f}% one {100 * r['err_cal_one_ttft_mean']:+.0f}%",
            flush=True,
        )
(dest / "rows.json").write_text(json.dumps({"rows": rows}, indent=1))
q = [r for r in rows if not r["noisy"]]
ttft, tpot, one = (100 * statistics.fmean(abs(r[k]) for r in q) for k in ("err_cal_ttft_mean", "err_cal_tpot_mean",
                                                                          "err_cal_one_ttft_mean"))  # fmt: skip
within = sum(abs(r["err_cal_ttft_mean"]) <= 0.15 for r in q)
print(f"mean abs err ttft {ttft:.0f}% tpot {tpot:.0f}% first-topology {one:.0f}%; within 15%: {within} of {len(q)}")
