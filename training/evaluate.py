"""Evaluate a StreamDiT model the way the app streams it, from the pixels it shows.

    python -m training.evaluate runs/cpu                      # the DiT and its autoencoder
    python -m training.evaluate student/ --teacher teacher/ --out runs/eval/student

WEIGHTS are what `streamdit-live --weights` takes: a model bundle, a folder holding one, or
a trained DiT and the autoencoder it was trained with. Every run is a `model.stream.StreamBuffer`
fed and decoded by the autoencoder's stream encoder and decoder, as the engine drives them.

Sections of the report (`report.json`, with `contact_sheet.png` beside it):
- text: held-out `SyntheticScenes` prompts; dominant colour and motion direction read
  from the decoded frames (`training.metrics`).
- video: real footage restyled by style prompts at several strengths; structure kept
  (low-resolution correlation, edges, SSIM) and the look (saturation, channel balance).
- temporal: frame-to-frame change and the seam ratio (chunk borders vs inside chunks).
- speed: model calls per output frame and the measured frames per second.
- agreement (with --teacher): per-chunk latent MSE, pixel MSE and PSNR of the student's
  stream against the teacher's, same prompts and seeds.

Letters: F frames, H W pixels, C latent channels, c latent frames per chunk.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from tqdm import tqdm

from model.bundle import BUNDLE_KIND, MINILM, load_bundle, load_pair
from model.checkpoint import CheckpointError, read_metadata
from model.stream import StreamMode
from model.text import TextEncoder, TextEncoderProtocol
from training import metrics
from training.config import ConfigError
from training.contact_sheet import SheetRow, contact_sheet, write_png
from training.eval_runs import (
    FOOTAGE_FRAMES,
    EvalError,
    EvalModels,
    StreamRun,
    StreamSettings,
    accuracy,
    agreement_rows,
    check_settings,
    held_out_scenes,
    load_footage,
    mean,
    run_stream,
    speed_scores,
    targets,
    text_scores,
    video_scores,
)
from training.scenes import render_scene

STYLE_PROMPTS = tuple(metrics.LOOK_CHECKS)
STRENGTHS = (0.3, 0.5, 0.8)


@dataclass(frozen=True)
class EvalConfig:
    size: int | None = None  # square frame side in pixels; None: the weights' own size
    text_size: int | None = None  # the same for text mode; None: `size`
    prompts: int = 4  # held-out text prompts
    chunks: int = 4  # chunks kept per run, after its warm-up
    strengths: tuple[float, ...] = STRENGTHS
    styles: tuple[str, ...] = STYLE_PROMPTS
    seed: int = 0
    student: StreamSettings = field(default_factory=StreamSettings)
    teacher: StreamSettings | None = None
    agreement_prompts: int = 2
    thumbs: int = 4  # frames per clip on the contact sheet


# --- loading -------------------------------------------------------------------------------


def _weight_files(paths: Sequence[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        files += sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
    return files


def load_models(paths: Sequence[Path], device: torch.device) -> EvalModels:
    """The model in `paths` (a bundle, a folder holding one, or a trained DiT and its
    autoencoder as two checkpoints), with the text encoder it was trained with.

    The one place that knows how weights are stored. It accepts what the app's `--weights`
    accepts, checked by model/bundle.py the same way, and also the hash text stub of smoke
    runs (which the app refuses: such a model cannot follow real prompts).
    """
    kinds: dict[str, list[Path]] = {}
    for path in _weight_files(paths):
        kinds.setdefault(read_metadata(path).get("kind", ""), []).append(path)
    bundles, dits, aes = (kinds.get(k, []) for k in (BUNDLE_KIND, "streamdit", "autoencoder"))
    names = " ".join(map(str, paths))
    if len(bundles) == 1 and not (dits or aes):
        bundle = load_bundle(bundles[0], device)
    elif len(dits) == 1 and len(aes) == 1 and not bundles:
        bundle = load_pair(dits[0], aes[0], device)
    else:
        raise EvalError(
            f"{names} must hold one model bundle, or one DiT and the autoencoder it was trained "
            "with; `python -m model.bundle pack` makes a bundle."
        )
    cfg, want = bundle.dit.cfg, bundle.info.text_encoder
    if want.is_stub:
        from training.textstub import HashTextEncoder

        text: TextEncoderProtocol = HashTextEncoder(cfg.text_dim, cfg.text_len)
    elif want.name == MINILM:
        text = TextEncoder(max_length=cfg.text_len, device=device)
    else:
        raise EvalError(f"{names} was trained with the text encoder {want}, which is not ours.")
    return EvalModels(bundle.dit.eval(), bundle.autoencoder.eval(), text, device, bundle.info)


def _record(models: EvalModels) -> dict[str, str]:
    """What training wrote into the DiT's metadata (a bundle keeps it as provenance)."""
    record = models.info.provenance.get("dit", {})
    return record if isinstance(record, dict) else {}


def sampling(
    models: EvalModels,
    chunk_size: int,
    steps: int | None,
    guidance: float | None,
    teacher_of: EvalModels | None = None,
    levels: int = 0,
) -> StreamSettings:
    """How to sample `models`: the flags first, then what distillation recorded (a student's
    `micro_steps` and `guidance`; for a teacher, its student's `teacher_micro_steps` and
    `teacher_guidance`, else its own record), else one call per stage without guidance."""
    own = _record(models)
    told = _record(teacher_of) if teacher_of is not None else {}
    steps = steps or int(told.get("teacher_micro_steps") or own.get("micro_steps") or 1)
    guidance = guidance or float(told.get("teacher_guidance") or own.get("guidance") or 1.0)
    return StreamSettings(chunk_size, steps, guidance, levels)


# --- the report ----------------------------------------------------------------------------


def _ok(flag: bool | None) -> str:
    return "-" if flag is None else "ok" if flag else "MISS"


def _label(run: StreamRun) -> str:
    s = run.settings
    levels = f" levels={s.levels}" if s.levels and run.mode is StreamMode.VIDEO else ""
    return (
        f"c={s.chunk_size} s={s.steps} g={s.guidance:g}{levels}, "
        f"{run.calls_per_frame:.2f} calls/frame"
    )


class Evaluation:
    """One evaluation of a student (and its teacher); `rows` collects the contact sheet."""

    def __init__(self, student: EvalModels, cfg: EvalConfig, teacher: EvalModels | None = None):
        self.student, self.teacher, self.cfg = student, teacher, cfg
        self.size = cfg.size or min(student.info.default_size)  # (W, H) -> a square side
        self.text_size = cfg.text_size or self.size
        for side in {self.size, self.text_size}:
            check_settings(student, cfg.student, side)  # before any run, not halfway
        self.per_chunk = cfg.student.chunk_size * student.ae.cfg.temporal_factor
        self.frames = cfg.chunks * self.per_chunk  # output frames per run
        self.rows: list[SheetRow] = []
        self.bar = tqdm(disable=True)

    def run(self, progress: bool = True) -> dict:
        cfg = self.cfg
        scenes = held_out_scenes(cfg.prompts, self.frames)
        agree = min(cfg.agreement_prompts, cfg.prompts) if self.teacher else 0
        total = len(scenes) + len(cfg.strengths) * len(cfg.styles) + (agree + 1) * bool(agree)
        stages = self.student.config.latent_frames // cfg.student.chunk_size
        needed = (2 * stages + cfg.chunks) * self.per_chunk  # the most a video run pushes
        self.footage, self.footage_name = load_footage(max(needed, FOOTAGE_FRAMES), self.size)
        with tqdm(total=total, desc="evaluate", disable=not progress) as self.bar:
            text = [
                self._stream(self.student, cfg.student, scene=s, seed=k)
                for k, s in enumerate(scenes)
            ]
            video = [
                self._stream(self.student, cfg.student, prompt=p, strength=s)
                for s in cfg.strengths
                for p in cfg.styles
            ]
            report = self._report(scenes, text, video)
            if self.teacher is not None and agree:
                report["agreement"] = self._agreement(scenes[:agree], text, video)
        return report

    def _stream(self, models, settings, scene=None, seed=0, prompt="", strength=1.0, codec=None):
        """One run: text mode for a scene (its drawing kept beside it), else video mode."""
        mode, reference, size = StreamMode.VIDEO, self.footage, self.size
        if scene is not None:
            mode, prompt, size = StreamMode.TEXT, scene.caption, self.text_size
            reference = render_scene(scene, self.frames, size, size)
        chunks, seed = self.cfg.chunks, self.cfg.seed + seed
        run = run_stream(
            models, settings, prompt, chunks, size, seed, reference, mode, strength, codec
        )
        self.bar.update()
        return run

    def _report(self, scenes, text_runs, video_runs) -> dict:
        cfg, mid = self.cfg, _nearest(self.cfg.strengths, 0.5)
        text = [text_scores(s, r) for s, r in zip(scenes, text_runs, strict=True)]
        video = [video_scores(r) for r in video_runs]
        for e, run in zip(text, text_runs, strict=True):
            verdict = (
                f"colour {e['color']} -> {e['read_color']}, "
                f"motion {e['direction']} -> {e['read_direction']}"
            )
            self._row(f"text: {run.prompt}", verdict, run, "the prompt, drawn")
        for e, run in zip(video, video_runs, strict=True):
            k = e["look"]
            detail = (
                f"structure {e['structure']:.2f} edges {e['edges']:.2f} ssim {e['ssim']:.2f}, "
                f"sat {k['saturation']:.2f} rgb {k['red']:.0f}/{k['green']:.0f}/{k['blue']:.0f} "
                f"look {_ok(e['look_ok'])}"
            )
            title = f"video {run.strength:g} ({run.stages} stages): {run.prompt}"
            self._row(title, detail, run, self.footage_name)
        by_strength = {
            f"{s:g}": mean(e["structure"] for e in video if e["strength"] == s)
            for s in cfg.strengths
        }
        ordered = [by_strength[f"{s:g}"] for s in sorted(cfg.strengths)]
        far = self.footage[FOOTAGE_FRAMES - self.frames : FOOTAGE_FRAMES]
        near = self.footage[: len(far)]
        info = self.student.info
        report = {
            "model": info.model,
            "text_encoder": str(info.text_encoder),
            "trained_sizes": [f"{w}x{h}" for w, h in info.trained_sizes],
            "size": self.size,
            "text_size": self.text_size,
            "student": asdict(cfg.student),
            "text": {"prompts": text, **accuracy(text)},
            "video": {
                "footage": self.footage_name,
                "input_look": metrics.look(near).to_dict(),
                # What unrelated frames of the same footage score: the floor to beat.
                "chance": {
                    "structure": round(metrics.structure_correlation(near, far), 4),
                    "edges": round(metrics.edge_correlation(near, far), 4),
                },
                "runs": video,
                "structure_by_strength": by_strength,
                # Never rising, and lower at the top strength than at the bottom one (strengths
                # in the same ceil(strength * N) stage count stream alike).
                "structure_falls": (
                    all(a >= b for a, b in zip(ordered, ordered[1:], strict=False))
                    and ordered[0] > ordered[-1]
                )
                if len(ordered) > 1 and None not in ordered
                else None,
                "looks_at_strength": mid,
                "looks_ok": {e["prompt"]: e["look_ok"] for e in video if e["strength"] == mid},
            },
            "temporal": {
                name: {k: mean(e.get(k) for e in entries) for k in ("frame_change", "seam_ratio")}
                for name, entries in (("text", text), ("video", video))
            },
            "speed": {
                "text": speed_scores(text_runs) if text_runs else None,
                "video": {
                    f"{s:g}": speed_scores([r for r in video_runs if r.strength == s])
                    for s in cfg.strengths
                    if cfg.styles
                },
            },
        }
        report["targets"] = targets(report)
        return report

    def _row(self, title: str, detail: str, run: StreamRun, left: str, right="output") -> None:
        self.rows.append(
            SheetRow(title, f"{detail} | {_label(run)}", run.reference, run.frames, left, right)
        )

    def _agreement(self, scenes, text_runs, video_runs) -> dict:
        """The teacher on the same prompts and seeds, through the student's autoencoder."""
        cfg, teacher, student = self.cfg, self.teacher, self.student
        mine = text_runs[: len(scenes)]
        theirs = [
            self._stream(teacher, cfg.teacher, scene=s, seed=k, codec=student)
            for k, s in enumerate(scenes)
        ]
        pairs = list(zip(mine, theirs, strict=True))
        mid = _nearest(cfg.strengths, 0.5)
        base = next((r for r in video_runs if r.strength == mid), None)
        if base is not None:
            pairs.append(
                (
                    base,
                    self._stream(
                        teacher, cfg.teacher, prompt=base.prompt, strength=mid, codec=student
                    ),
                )
            )
        else:
            self.bar.update()
        chunks = [row for s, t in pairs for row in agreement_rows(s, t)]
        for s, t in pairs:
            title = f"teacher vs student ({s.mode.value}): {s.prompt}"
            self.rows.append(
                SheetRow(
                    title,
                    f"teacher {_label(t)} | student {_label(s)}",
                    t.frames,
                    s.frames,
                    "teacher",
                    "student",
                )
            )
        return {
            "teacher": asdict(cfg.teacher),
            "chunks": chunks,
            "latent_mse": mean(c["latent_mse"] for c in chunks),
            "pixel_mse": mean(c["pixel_mse"] for c in chunks),
            "psnr": mean(c["psnr"] for c in chunks),
            # Both on the same held-out prompts and seeds, so the two rows compare.
            "table": {
                who: {
                    **accuracy([text_scores(s, r) for s, r in zip(scenes, runs, strict=True)]),
                    **speed_scores(runs),
                }
                for who, runs in (("teacher", theirs), ("student", mine))
            },
        }


def _nearest(values: Sequence[float], target: float) -> float | None:
    return min(values, key=lambda v: abs(v - target)) if values else None


# --- the command line ----------------------------------------------------------------------


def summary(report: dict) -> list[str]:
    """The report in a few lines, for the terminal."""
    text, video, speed = report["text"], report["video"], report["speed"]

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.0f}%"

    chance = video["chance"]
    lines = [
        f"text, {len(text['prompts'])} held-out prompts: colour {pct(text['color_accuracy'])}, "
        f"motion direction {pct(text['direction_accuracy'])} "
        f"(on the right axis {pct(text['axis_accuracy'])})",
        f"video to video on {video['footage']}: structure by strength "
        + ", ".join(f"{s}: {v}" for s, v in video["structure_by_strength"].items())
        + f" (falls: {video['structure_falls']}; unrelated frames score {chance['structure']})",
        f"looks at strength {video['looks_at_strength']}: "
        + ", ".join(f"{p} {_ok(ok)}" for p, ok in video["looks_ok"].items()),
    ]
    for name, t in report["temporal"].items():
        lines.append(
            f"temporal ({name}): change {t['frame_change']} levels/frame, "
            f"seam ratio {t['seam_ratio']}"
        )
    for name, s in [("text", speed["text"])] + [
        (f"video {k}", v) for k, v in speed["video"].items()
    ]:
        if s:
            lines.append(
                f"speed ({name}): {s['model_calls_per_frame']} calls/frame, {s['fps']} fps"
            )
    if "agreement" in report:
        a = report["agreement"]
        lines.append(
            f"agreement with the teacher ({a['teacher']}): latent MSE {a['latent_mse']}, "
            f"pixel MSE {a['pixel_mse']}, PSNR {a['psnr']} dB"
        )
        for who, row in a["table"].items():
            lines.append(f"  {who}: {row}")
    lines += [f"target {name}: {_ok(ok)}" for name, ok in report["targets"].items()]
    return lines


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(",") if v.strip())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m training.evaluate", description=__doc__.split("\n")[0]
    )
    p.add_argument("weights", nargs="+", type=Path, help="files or folders of .safetensors")
    p.add_argument("--teacher", nargs="+", type=Path, help="the teacher's weights (agreement)")
    p.add_argument("--out", type=Path, default=Path("runs/eval"), help="report folder")
    p.add_argument("--size", type=int, help="square frame side in pixels (default: trained)")
    p.add_argument("--text-size", type=int, help="the same for text mode (default: --size)")
    p.add_argument("--prompts", type=int, default=4, help="held-out text prompts")
    p.add_argument("--chunks", type=int, default=4, help="chunks kept per run, after warm-up")
    p.add_argument("--strengths", type=_floats, default=STRENGTHS, help="e.g. 0.3,0.5,0.8")
    p.add_argument("--style", action="append", help="a style prompt (repeatable; default: 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chunk-size", type=int, default=1, help="latent frames per chunk")
    p.add_argument("--steps", type=int, help="model calls per stage (default: recorded, or 1)")
    p.add_argument(
        "--levels",
        type=int,
        default=0,
        help="video mode's noise levels, as the app's --levels (default 0: one per chunk of "
        "the buffer)",
    )
    p.add_argument("--guidance", type=float, help="CFG scale (default: recorded, or 1)")
    p.add_argument("--teacher-steps", type=int, help="default: what distillation recorded")
    p.add_argument("--teacher-guidance", type=float, help="default: what distillation recorded")
    p.add_argument("--agreement-prompts", type=int, default=2)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--threads", type=int, help="CPU threads (default: all cores but one)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    try:
        return _main(args)
    except (EvalError, CheckpointError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _main(args: argparse.Namespace) -> int:
    from training.distributed import pick_device

    for name in ("prompts", "chunks", "steps", "chunk_size", "teacher_steps"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise EvalError(f"--{name.replace('_', '-')} must be at least 1.")
    if args.levels < 0:
        raise EvalError(
            f"--levels must be 0 (one per chunk of the buffer) or more, got {args.levels}."
        )
    if not all(0 < s <= 1 for s in args.strengths):
        raise EvalError(f"--strengths must lie in (0, 1], got {args.strengths}.")
    torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) - 1))  # as the app
    torch.set_flush_denormal(True)
    for name in ("guidance", "teacher_guidance"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise EvalError(f"--{name.replace('_', '-')} must be at least 1 (1 is off).")
    device = pick_device(args.device, 0)
    student = load_models(args.weights, device)
    cfg = EvalConfig(
        size=args.size,
        text_size=args.text_size,
        prompts=args.prompts,
        chunks=args.chunks,
        strengths=args.strengths,
        styles=tuple(args.style or STYLE_PROMPTS),
        seed=args.seed,
        student=sampling(student, args.chunk_size, args.steps, args.guidance, levels=args.levels),
        agreement_prompts=args.agreement_prompts,
    )
    teacher = None
    if args.teacher:
        teacher = load_models(args.teacher, device)
        same = ("autoencoder_digest", "text_encoder")
        if any(getattr(teacher.info, k) != getattr(student.info, k) for k in same):
            raise EvalError(
                "the teacher and the student must share one autoencoder and text encoder; "
                "give the teacher the student was distilled from."
            )
        settings = sampling(
            teacher,
            args.chunk_size,
            args.teacher_steps,
            args.teacher_guidance,
            student,
            args.levels,
        )
        cfg = replace(cfg, teacher=settings)
    start = time.perf_counter()
    evaluation = Evaluation(student, cfg, teacher)
    report = evaluation.run(progress=not args.no_progress)
    report["weights"] = [str(w) for w in args.weights]
    report["teacher_weights"] = [str(w) for w in args.teacher or []]
    report["seconds"] = round(time.perf_counter() - start, 2)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(report, indent=2, allow_nan=False))
    sizes = f"{evaluation.size}px" + (
        f" (text {evaluation.text_size}px)" if evaluation.text_size != evaluation.size else ""
    )
    header = f"{' '.join(report['weights'])} at {sizes}, {report['seconds']} s"
    sheet = contact_sheet(evaluation.rows, header, cfg.thumbs)
    write_png(args.out / "contact_sheet.png", sheet)
    print("\n".join(summary(report)))
    print(f"wrote {args.out / 'report.json'} and {args.out / 'contact_sheet.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
