"""Reporting: the markdown sections and figures of a leaderboard, rendered from records alone.

    bench leaderboard --profile default    # bench.leaderboard calls these on leaderboards/default/records/

:mod:`bench.report.sections` writes the tables and text, :mod:`bench.report.series` the training
series and tuning-dynamics figures; both read only record dicts (nothing under ``runs/``, nothing
from training code), and every output is byte-stable. What each metric means comes from
:mod:`bench.metrics`. The file names below are those inside ``leaderboards/<profile>/``.
"""

RECORDS_DIR = "records"  # leaderboards/<profile>/records/: the reported records
AUDIT_PNG = "steer_audit.png"  # the steering audit's figure, copied there by `bench publish`
SCAN_PNG = "steer_scan.png"  # the refusal-direction selection scan (extra.selection), written at render time
SERIES_PNG = "series.png"  # training logs (extra.series), written at render time
TRACKING_PNG = "tracking.png"  # tuning dynamics (extra.tracking.series), written at render time
SAMPLES_DIR = "samples"  # leaderboards/<profile>/samples/<variant>.jsonl: the generations behind every rate
JUDGE_JSON = "judge.json"  # the refusal judge's agreement with human labels on held-out model outputs
MODEL_JUDGE_JSON = "model_judge.json"  # a GPU profile's model judge on the same outputs (`bench judge-check`)
