"""``litdistill --help``: the commands, the config groups and their options, and examples, in the
project's words. Hydra's own help (its flags, the full config dump) is one flag away: ``--hydra-help``."""

from __future__ import annotations

from litdistill.core.conf import config_dir

# groups of the training config a user picks from (conf/sweep holds W&B sweep files, not a Hydra group;
# conf/prompt and conf/teacher_api belong to `litdistill generate`)
NOT_TRAINING_GROUPS = {"sweep", "prompt", "teacher_api", "hydra", "paths"}

USAGE = """\
litdistill: distil a big frozen teacher into a small student (PyTorch Lightning + Hydra).

Usage:
  litdistill [key=value ...]            train: fine-tune the teacher, distil, train the baseline, report
  litdistill generate [key=value ...]   a teacher (an API or a local model) writes or labels data
  litdistill new [--no-input] [-o DIR]  a new project from the cookiecutter template
  litdistill -m key=a,b [...]           a Hydra multirun (a sweep over the values), ranked at its end
  litdistill rank DIR... [rank.by=f1]   a leaderboard of finished runs: quality, speed, size, Pareto
  python -m litdistill.cli.sweeping conf/sweep/*.yaml   check W&B sweep files, preview suggestions

Examples:
  litdistill                                        the default run (offline, a few minutes on 2 cores)
  litdistill experiment=tiny                        a plumbing check on tiny models (seconds)
  litdistill report.seeds=5                         5 seeds: distilled - labels-only with a 95% interval
  litdistill data.unlabeled=pool.txt augment=neighbours   more text for the teacher to teach (transfer set)
  litdistill loss=kd_ce loss.kd.temperature=4 trainer.max_epochs=3
  litdistill teacher=pretrained teacher.name_or_path=bert-base-uncased data=files \\
      data.data_files.train=train.csv data.data_files.validation=dev.csv data.data_files.test=test.csv
  litdistill cache=build ... && litdistill cache=use ...      the teacher run once, its outputs stored
  litdistill <same overrides> resume=true run_dir=<run dir>   continue a stopped run exactly
  litdistill generate teacher_api=openai prompt=explain input.path=prompts.jsonl
  litdistill rank outputs/distill/multiruns/<time> rank.max_latency_ms=20   the best student under 20 ms

Options:
  --cfg job        print the composed config and exit
  --hydra-help     Hydra's own help (all of its flags)
  LITDISTILL_DEBUG=1 (environment)   tracebacks on the console for user errors too

Config groups (pick one with group=option; set a key with group.key=value):
"""


def help_text() -> str:
    """The help page, with the groups and their options read from the shipped configs."""
    root = config_dir()
    lines = [USAGE]
    for group in sorted(d for d in root.iterdir() if d.is_dir() and d.name not in NOT_TRAINING_GROUPS):
        options = sorted(p.stem for p in group.glob("*.yaml"))
        lines.append(f"  {group.name + '=':<14}{', '.join(options)}")
    lines.append("\nDocs: README.md and docs/ (architecture, losses, features, caching, generation, scaling).")
    return "\n".join(lines) + "\n"
