"""The whole recipe of a shipped model, one command: autoencoder, latent cache (and the
second cache some stages mix in), DiT teacher, decoder fine-tune, distillation, bundle,
evaluation.

    python -m training.recipe cpu                    # the shipped model (hours on 2 cores)
    python -m training.recipe tiny --runs /tmp/ci    # the same recipe, shortened for CI
    python -m training.recipe cpu --only pack evaluate
    python -m training.recipe tiny --set dit:stages.0.steps=20 --set evaluate:--prompts=2

Each step calls the module's own `main(argv)` in this process and first prints the exact
command it stands for, so any step can be copied and run alone. Every path is wired by the
recipe: the caches are encoded by the autoencoder of step 1, the DiT trains on them, the
distillation's teacher is that DiT, and the bundle packs the distilled DiT with that
autoencoder (its decoder fine-tuned on the frozen encoder when the profile has that step; the
latent space does not move, so that step may also run beside the DiT, on another core).
Running the recipe again resumes it: the trainers resume from their own checkpoints (a
finished run does nothing), and the cache, bundle and evaluation are skipped while their
output is newer than their inputs. A failing step stops the chain with its exit code.
"""

from __future__ import annotations

import argparse
import importlib
import shlex
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from training.config import ConfigError, TrainConfig, load_config


class Step(Enum):
    AUTOENCODER = "autoencoder"
    CACHE = "cache"
    MIX_CACHE = "mix-cache"
    DIT = "dit"
    DECODER = "decoder"
    DISTILL = "distill"
    PACK = "pack"
    EVALUATE = "evaluate"


TITLES = {
    Step.AUTOENCODER: "autoencoder",
    Step.CACHE: "latent cache",
    Step.MIX_CACHE: "mix cache",
    Step.DIT: "DiT teacher",
    Step.DECODER: "decoder fine-tune",
    Step.DISTILL: "distillation",
    Step.PACK: "bundle",
    Step.EVALUATE: "evaluation",
}
MODULES = {
    Step.AUTOENCODER: "training.train_autoencoder",
    Step.CACHE: "training.cache_latents",
    Step.MIX_CACHE: "training.cache_latents",
    Step.DIT: "training.train",
    Step.DECODER: "training.train_autoencoder",
    Step.DISTILL: "training.distill",
    Step.PACK: "model.bundle",
    Step.EVALUATE: "training.evaluate",
}
CONFIGS = Path("training/configs")
ROOT = Path(__file__).resolve().parents[1]


def _config(path: Path) -> Path:
    """A config path as given when it exists from here, else from the repository root."""
    return path if path.exists() or path.is_absolute() else ROOT / path


@dataclass(frozen=True)
class Profile:
    """One recipe: the config file of each trainer, what the recipe sets on top of it, the
    cache size, the bundle and how it is evaluated. Paths between steps are the recipe's."""

    name: str
    autoencoder_config: Path
    dit_config: Path  # also the cache's: the cache encodes the DiT's data
    distill_config: Path
    cache_clips: int
    bundle: Path  # where the bundle goes without --runs
    half: bool = False  # store the bundle in float16
    evaluated_sizes: tuple[str, ...] = ()  # pack --evaluated-size WxH
    evaluate_args: tuple[str, ...] = ()  # extra `training.evaluate` arguments
    # `--set` overrides per trainer (Step.CACHE gets the DiT's ones too).
    overrides: dict[Step, tuple[str, ...]] = field(default_factory=dict)
    # The decoder alone on the frozen encoder (`optim.train_encoder = false`); None: no
    # such step, the bundle takes the first autoencoder as it is.
    decoder_config: Path | None = None
    # The student learns on the teacher's latent cache (as distill_cpu.toml does), so on
    # exactly what the teacher saw; False: on the distillation config's own data.
    distill_on_cache: bool = True
    # The second cache that stages with a `mix_cache` draw part of their batches from,
    # encoded from this config's data (`mix_clips` clips); None: no stage mixes.
    mix_config: Path | None = None
    mix_clips: int = 0


# CI: threads, logging and checkpoints that suit a few steps on one core.
_QUICK = ("run.threads=1", "run.progress=false")
# The teacher's and the student's: cpu.toml's text encoder, data mix and paired share, at
# tiny's 64 px.
_TINY_DATA = (
    "text.encoder=minilm",
    "flow.paired=0.5",
    "data.synthetic=0.5",
    "data.styles=0.5",
    "data.size=64",
    "data.crop=32",
    "data.max_objects=1",
)

PROFILES = {
    "cpu": Profile(
        name="cpu",
        autoencoder_config=CONFIGS / "autoencoder_cpu.toml",
        dit_config=CONFIGS / "cpu.toml",
        distill_config=CONFIGS / "distill_cpu.toml",
        decoder_config=CONFIGS / "autoencoder_cpu_decoder.toml",
        cache_clips=5000,
        bundle=Path("model/weights/streamdit-cpu.safetensors"),
        half=True,
        # Text mode at the size scenes were drawn at; video to video at the footage's 256.
        evaluate_args=("--text-size=128", "--prompts=8"),
        mix_config=CONFIGS / "cpu_scenes64.toml",  # the motion bench's 64 px scenes
        mix_clips=4000,
    ),
    # The cpu recipe shortened for tests: the tiny presets, a trained (not random) tiny
    # autoencoder, cpu.toml's data mix (scenes and styled footage, footage cut to crops) for
    # the teacher and the student, the app's text encoder (a bundle trained on the hash
    # stub is refused by the app), and a handful of steps per trainer.
    "tiny": Profile(
        name="tiny",
        autoencoder_config=CONFIGS / "autoencoder_tiny.toml",
        dit_config=CONFIGS / "tiny.toml",
        distill_config=CONFIGS / "distill_tiny.toml",
        cache_clips=16,
        bundle=Path("runs/streamdit-tiny.safetensors"),
        evaluate_args=(
            "--prompts=2",
            "--chunks=1",
            "--strengths=0.5",
            "--agreement-prompts=1",
            "--threads=1",
            "--no-progress",
        ),
        overrides={
            Step.AUTOENCODER: (
                *_QUICK,
                "optim.steps=6",
                "optim.warmup=2",
                "run.log_every=3",
                "run.eval_every=6",
                "run.eval_clips=2",
                "run.ckpt_every=6",
            ),
            Step.DIT: (
                *_QUICK,
                *_TINY_DATA,
                # As cpu.toml's last stage: half its batches from scenes of another size
                # (tiny.toml's 64 px beside 32 px crops); the recipe names the cache.
                "stages=[{name='main', steps=4, lr=5e-4}, "
                "{name='mix', steps=2, lr=5e-4, mix_cache='mix', mix_share=0.5}]",
                "optim.warmup=2",
                "run.log_every=3",
                "run.ckpt_every=6",
            ),
            Step.DISTILL: (
                *_QUICK,
                *_TINY_DATA,
                "stages.0.steps=3",
                "optim.warmup=1",
                "distill.teacher_steps=2",
                "run.log_every=3",
                "run.ckpt_every=3",
            ),
        },
        mix_config=CONFIGS / "tiny.toml",
        mix_clips=8,
    ),
}


@dataclass(frozen=True)
class Paths:
    """Where every step reads and writes."""

    autoencoder_run: Path
    decoder_run: Path | None
    dit_run: Path
    distill_run: Path
    cache: Path
    mix_cache: Path
    bundle: Path
    evaluation: Path

    @property
    def autoencoder(self) -> Path:
        return self.autoencoder_run / "autoencoder.safetensors"

    @property
    def shipped_autoencoder(self) -> Path:
        """The autoencoder the bundle takes: the fine-tuned decoder's run, when there is one."""
        run = self.decoder_run or self.autoencoder_run
        return run / "autoencoder.safetensors"

    @property
    def dit(self) -> Path:
        return self.dit_run / "streamdit_ema.safetensors"

    @property
    def student(self) -> Path:
        return self.distill_run / "streamdit_ema.safetensors"


def _run_name(config: Path, cls: type) -> str:
    """The last part of a config's run.out_dir: the run's folder under the runs root."""
    return Path(load_config(_config(config), cls=cls).run.out_dir).name


def plan_paths(profile: Profile, runs: Path | None) -> Paths:
    """Every run under `runs` (default runs/), named as its config names it; the bundle at
    the profile's path, or in `runs` when given."""
    from training.distill import DistillConfig
    from training.train_autoencoder import AETrainConfig

    root = runs or Path("runs")
    dit_run = root / _run_name(profile.dit_config, TrainConfig)
    return Paths(
        autoencoder_run=root / _run_name(profile.autoencoder_config, AETrainConfig),
        decoder_run=(
            root / _run_name(profile.decoder_config, AETrainConfig)
            if profile.decoder_config
            else None
        ),
        dit_run=dit_run,
        distill_run=root / _run_name(profile.distill_config, DistillConfig),
        cache=dit_run / "latents.safetensors",
        mix_cache=dit_run / "latents-mix.safetensors",
        bundle=profile.bundle if runs is None else runs / profile.bundle.name,
        evaluation=root / f"eval-{profile.name}",
    )


@dataclass(frozen=True)
class Command:
    """One step as a command line: `python -m MODULE ARGV`, and what makes it up to date."""

    step: Step
    argv: tuple[str, ...]
    output: Path | None = None  # skipped while newer than every input (None: never)
    inputs: tuple[Path, ...] = ()

    @property
    def text(self) -> str:
        return shlex.join(["python", "-m", MODULES[self.step], *self.argv])


def _sets(overrides: Sequence[str]) -> list[str]:
    return [arg for o in overrides for arg in ("--set", o)]


def _cache(step: Step, config: Path, clips: int, out: Path, sets: Sequence[str], ae: Path):
    """`training.cache_latents` of a config's data into `out`; up to date while newer than
    the autoencoder and the config."""
    argv = (str(_config(config)), f"--clips={clips}", f"--out={out}")
    return Command(
        step,
        (*argv, *_sets([*sets, "data.latent_cache="])),
        output=out,
        inputs=(ae, _config(config)),
    )


def _mix_wiring(config: Path, overrides: Sequence[str], path: Path, cls: type) -> list[str]:
    """`stages.N.mix_cache=path` for each stage of the config that mixes in a second cache."""
    stages = load_config(_config(config), overrides, cls=cls).stages
    return [f"stages.{i}.mix_cache={path}" for i, s in enumerate(stages) if s.mix_cache]


def plan(
    profile: Profile,
    paths: Paths,
    clips: int | None = None,
    extra: dict[Step, tuple[str, ...]] | None = None,
) -> list[Command]:
    """The commands of the recipe, in order, with their paths wired together."""
    from training.distill import DistillConfig

    extra = extra or {}

    def overrides(step: Step, *wiring: str) -> list[str]:
        return [*profile.overrides.get(step, ()), *wiring, *extra.get(step, ())]

    def mine(step: Step, *wiring: str) -> list[str]:
        return _sets(overrides(step, *wiring))

    ae = ("autoencoder.source=checkpoint", f"autoencoder.checkpoint={paths.autoencoder}")
    dit_sets = overrides(Step.DIT, *ae)
    dit_mix = _mix_wiring(profile.dit_config, dit_sets, paths.mix_cache, TrainConfig)
    distill_mix = _mix_wiring(
        profile.distill_config, overrides(Step.DISTILL), paths.mix_cache, DistillConfig
    )
    mix = []
    if dit_mix or distill_mix:
        if profile.mix_config is None:
            raise ConfigError(
                f"a stage mixes in a second cache but profile {profile.name} has no mix_config"
            )
        mix.append(
            _cache(
                Step.MIX_CACHE,
                profile.mix_config,
                profile.mix_clips,
                paths.mix_cache,
                overrides(Step.MIX_CACHE, *ae),
                paths.autoencoder,
            )
        )
    evaluated = [arg for s in profile.evaluated_sizes for arg in ("--evaluated-size", s)]
    decoder = []
    if profile.decoder_config is not None:
        init = (f"model.init={paths.autoencoder}", f"run.out_dir={paths.decoder_run}")
        decoder.append(
            Command(
                Step.DECODER, (str(_config(profile.decoder_config)), *mine(Step.DECODER, *init))
            )
        )
    return [
        Command(
            Step.AUTOENCODER,
            (
                str(_config(profile.autoencoder_config)),
                *mine(Step.AUTOENCODER, f"run.out_dir={paths.autoencoder_run}"),
            ),
        ),
        _cache(
            Step.CACHE,
            profile.dit_config,
            clips or profile.cache_clips,
            paths.cache,
            [*dit_sets, *extra.get(Step.CACHE, ())],
            paths.autoencoder,
        ),
        *mix,
        Command(
            Step.DIT,
            (
                str(_config(profile.dit_config)),
                *_sets(
                    [
                        *dit_sets,
                        f"data.latent_cache={paths.cache}",
                        *dit_mix,
                        f"run.out_dir={paths.dit_run}",
                    ]
                ),
            ),
        ),
        *decoder,
        Command(
            Step.DISTILL,
            (
                str(_config(profile.distill_config)),
                *mine(
                    Step.DISTILL,
                    *ae,
                    *([f"data.latent_cache={paths.cache}"] if profile.distill_on_cache else []),
                    *distill_mix,
                    f"distill.teacher={paths.dit}",
                    f"run.out_dir={paths.distill_run}",
                ),
            ),
        ),
        Command(
            Step.PACK,
            (
                "pack",
                f"--dit={paths.student}",
                f"--autoencoder={paths.shipped_autoencoder}",
                f"--out={paths.bundle}",
                *evaluated,
                *(["--half"] if profile.half else []),
            ),
            output=paths.bundle,
            inputs=(paths.student, paths.shipped_autoencoder),
        ),
        Command(
            Step.EVALUATE,
            (
                str(paths.bundle),
                f"--out={paths.evaluation}",
                "--teacher",
                str(paths.dit),
                str(paths.shipped_autoencoder),
                *profile.evaluate_args,
                *extra.get(Step.EVALUATE, ()),
            ),
            output=paths.evaluation / "report.json",
            inputs=(paths.bundle, paths.dit, paths.shipped_autoencoder),
        ),
    ]


def up_to_date(output: Path | None, inputs: Sequence[Path]) -> bool:
    """True when `output` exists and no input that exists is newer."""
    if output is None or not output.is_file():
        return False
    mtime = output.stat().st_mtime
    return all(p.stat().st_mtime <= mtime for p in inputs if p.exists())


def run_command(command: Command) -> int:
    """`python -m MODULE ARGV` in this process; the module's exit code (1 on a crash)."""
    main = importlib.import_module(MODULES[command.step]).main
    try:
        return int(main(list(command.argv)) or 0)
    except SystemExit as e:  # argparse
        return e.code if isinstance(e.code, int) else 1
    except Exception:
        traceback.print_exc()
        return 1


@dataclass
class Timing:
    step: Step
    seconds: float
    outcome: str  # "done", "skipped", "failed (exit N)"


def run_recipe(commands: Sequence[Command], only: Sequence[Step] = ()) -> tuple[int, list[Timing]]:
    """Run `commands` in order (those of `only`, when given); stops at the first failure."""
    timings: list[Timing] = []
    total = len(commands)
    for number, command in enumerate(commands, 1):
        if only and command.step not in only:
            continue
        print(f"[{number}/{total}] {TITLES[command.step]}: {command.text}", flush=True)
        start = time.perf_counter()
        if up_to_date(command.output, command.inputs):
            print("  skipped: up to date", flush=True)
            timings.append(Timing(command.step, time.perf_counter() - start, "skipped"))
            continue
        code = run_command(command)
        seconds = time.perf_counter() - start
        if code != 0:
            timings.append(Timing(command.step, seconds, f"failed (exit {code})"))
            print(
                f"error: step {number}/{total} ({TITLES[command.step]}) failed with exit code "
                f"{code}; fix it and run the recipe again to resume.",
                file=sys.stderr,
            )
            return code, timings
        timings.append(Timing(command.step, seconds, "done"))
    return 0, timings


def timing_table(timings: Sequence[Timing]) -> str:
    rows = [(TITLES[t.step], f"{t.seconds:.1f} s", t.outcome) for t in timings]
    rows.append(("total", f"{sum(t.seconds for t in timings):.1f} s", ""))
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{a:<{width}}  {b:>9}  {c}".rstrip() for a, b, c in rows)


def parse_sets(items: Sequence[str]) -> dict[Step, tuple[str, ...]]:
    """["dit:optim.lr=1e-4", "evaluate:--prompts=2"] -> {Step.DIT: ("optim.lr=1e-4",), ...}."""
    out: dict[Step, list[str]] = {}
    names = ", ".join(s.value for s in Step if s is not Step.PACK)
    for item in items:
        name, sep, value = item.partition(":")
        step = next((s for s in Step if s.value == name.strip() and s is not Step.PACK), None)
        if step is None or not sep or not value:
            raise ConfigError(
                f"--set expects STEP:key=value with STEP one of {names}, got {item!r}"
            )
        out.setdefault(step, []).append(value)
    return {step: tuple(values) for step, values in out.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.recipe",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("profile", choices=sorted(PROFILES))
    parser.add_argument("--runs", type=Path, help="put every run, the cache and the bundle here")
    parser.add_argument("--clips", type=int, help="clips in the latent cache (profile's default)")
    parser.add_argument(
        "--only", nargs="+", choices=[s.value for s in Step], default=[], help="run only these"
    )
    parser.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="STEP:KEY=VALUE",
        help="a config override for one trainer (dit: also reaches the cache), or an "
        "argument for evaluate (evaluate:--prompts=8); repeatable",
    )
    args = parser.parse_args(argv)
    profile = PROFILES[args.profile]
    try:
        if args.clips is not None and args.clips < 1:
            raise ConfigError(f"--clips must be at least 1, got {args.clips}")
        commands = plan(profile, plan_paths(profile, args.runs), args.clips, parse_sets(args.sets))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    code, timings = run_recipe(commands, [Step(s) for s in args.only])
    print(f"\nrecipe {profile.name}, wall time per step:\n{timing_table(timings)}")
    return code


__all__ = ["PROFILES", "Command", "Paths", "Profile", "Step", "main", "plan", "plan_paths"]

if __name__ == "__main__":
    sys.exit(main())
