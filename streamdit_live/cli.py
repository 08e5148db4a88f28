"""`streamdit-live`: the control app, or the live pipeline headless; benchmark; presets.

With no arguments it opens the control app (`gui`) where a display exists, and otherwise
says so in one sentence and runs `run` with the live defaults.

Control flags (--prompt, --strength, ...) are generated from the control schema, so their
types, ranges and help are the ones OSC and presets use. A user mistake (a bad flag, or a
source, OSC port or output that does not work here) prints one sentence and exits with
status 2; torch is imported only by the commands that stream.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import cv2

from streamdit_live.controls import CONTROLS, ControlError, Controls, Mode, Size
from streamdit_live.osc import DEFAULT_PORT, parse_host_port
from streamdit_live.plans import (
    LIVE_OUTPUTS,
    LIVE_SOURCE,
    OUT_SIZE_MODEL,
    PlanKind,
    plan_from_args,
)
from streamdit_live.presets import PresetError, PresetLibrary, preset_weights, to_toml
from streamdit_live.sinks import VIRTUALCAM_SIZE, OutputFit, parse_out_size

PROG = "streamdit-live"
EXIT_USAGE, EXIT_FAILED, EXIT_INTERRUPTED = 2, 1, 130

EXAMPLES = f"""\
examples:
  {PROG}
      the control app; with no display, the live defaults: webcam:0 (or the demo) ->
      virtual camera + preview window + MJPEG on :8090
  {PROG} gui --weights bundle.safetensors
  {PROG} run --source demo --out file:out.mp4 --seconds 10
  {PROG} run --source webcam:0 --out virtualcam --preset realtime --prompt "a comic book drawing"
  {PROG} run --source demo --out file:hd.mp4 --out-size 1280x720 --size 448x256 --seconds 10
  {PROG} run --mode text --preset text-stream --out mjpeg:8090 --osc-port 9000
  {PROG} run --source file:clip.mp4 --out file:styled.mp4 --frames 300 --metrics run.jsonl
  {PROG} presets list
  {PROG} bench --source demo --preset realtime --seconds 20 --json bench.json
  {PROG} bench --model tiny --random-weights --seconds 5
  {PROG} download wan2.1-t2v-1.3b && {PROG} download taew2_1
  {PROG} run --preset wan-t2v --out window          (a CUDA GPU; docs/WEIGHTS.md)

OSC: send /streamdit/prompt s, /streamdit/strength f, ... to 127.0.0.1:{DEFAULT_PORT}
(docs/OSC.md lists every address). Presets live in presets/ and in your config folder.
"""

_COMMANDS = ("run", "bench", "presets", "gui", "download")
_GLOBAL_FLAGS = ("-v", "-vv", "--verbose", "-q", "--quiet")
# Control flags: every control except pause (a live toggle, not a start option).
_FLAG_CONTROLS = tuple(name for name in CONTROLS if name != "pause")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _metavar(name: str) -> str:
    spec = CONTROLS[name]
    if spec.kind is Mode:
        return "|".join(m.value for m in Mode)
    if spec.choices:
        return "|".join(spec.choices)
    return {str: "TEXT", float: "F", int: "N", Size: "WxH"}[spec.kind]


def _control_type(name: str):
    def parse(text: str):
        try:
            return CONTROLS[name].parse(text)
        except ControlError as exc:
            raise argparse.ArgumentTypeError(str(exc).rstrip(".")) from None

    parse.__name__ = name  # argparse names the type in some messages
    return parse


def _host_port(text: str) -> tuple[str, int]:
    try:
        return parse_host_port(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _out_size(text: str) -> object:
    if text.strip().lower() == OUT_SIZE_MODEL:
        return OUT_SIZE_MODEL
    try:
        return parse_out_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).rstrip(".")) from None


def _out_fit(text: str) -> OutputFit:
    try:
        return OutputFit(text.strip().lower())
    except ValueError:
        choices = " or ".join(f.value for f in OutputFit)
        raise argparse.ArgumentTypeError(f"the fit must be {choices}, got {text!r}") from None


def _add_output_size(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("output size (all outputs share it)")
    group.add_argument(
        "--out-size",
        type=_out_size,
        metavar="WxH|model",
        help="the size every output opens at, e.g. 1280x720; even sides from 32 to 4096. "
        "Frames are scaled to it once, whatever the model's --size. Default: "
        f"{VIRTUALCAM_SIZE} when a virtualcam is among the outputs (meeting apps and OBS "
        "expect a common camera size), otherwise the model's size; `model` forces the "
        "model's size.",
    )
    group.add_argument(
        "--out-fit",
        type=_out_fit,
        default=OutputFit.COVER,
        metavar="|".join(f.value for f in OutputFit),
        help="when the shapes differ (a square model frame in a 16:9 output): cover (default) "
        "fills the whole picture like a camera does and crops the overflow, centered "
        "(256x256 to 1280x720 keeps the middle 56%% of the height); letterbox shows the "
        "whole frame between black bars. For little cropping pick a model --size of about "
        "the output's shape, e.g. --size 448x256 for 16:9.",
    )


def _stream_options() -> argparse.ArgumentParser:
    """Options shared by `run` and `bench`: preset, controls, device, weights."""
    parent = _Parser(add_help=False)
    group = parent.add_argument_group("look and model (override the preset)")
    group.add_argument(
        "--preset", metavar="NAME", help="start from a preset (see `presets list`) or a .toml file"
    )
    for name in _FLAG_CONTROLS:
        spec = CONTROLS[name]
        default = spec.default
        default = default.value if isinstance(default, Mode) else default
        default = str(default) if isinstance(default, Size) else default
        group.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            type=_control_type(name),
            metavar=_metavar(name),
            help=f"{spec.help} Default {default!r}.",
        )
    group.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when present)")
    group.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="CPU threads for the model (default: all cores but one, which keeps a busy "
        "machine from stalling the stream)",
    )
    weights = group.add_mutually_exclusive_group()
    weights.add_argument(
        "--weights",
        action="append",
        type=Path,
        default=[],
        metavar="PATH",
        help="a model bundle (.safetensors, see docs/BUNDLES.md) or a folder holding one, or a "
        "trained DiT and its autoencoder (give --weights twice), or a Wan2.1-architecture "
        "model's -Diffusers download folder (with its TAEHV file in it or given as a second "
        "--weights, and optionally a DiT fine-tuned from it by training/ as another "
        "--weights; see `download` and docs/WEIGHTS.md). Without it the cpu model "
        "loads the trained weights shipped in model/weights/ (or $STREAMDIT_WEIGHTS); tiny, "
        "4b, or cpu without that file, run random weights and the output looks like noise.",
    )
    weights.add_argument(
        "--random-weights",
        action="store_true",
        help="run random weights even where trained ones ship (tests, benchmarks); the "
        "output looks like noise",
    )
    return parent


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Real-time StreamDiT video effects for live streaming: a webcam, screen or "
        "file in, restyled by a streaming video diffusion model, out to a virtual camera, a "
        "recording, a preview window or an MJPEG stream; driven by presets and OSC. "
        "Without arguments it opens the control app (`gui`) where a display exists, else "
        "runs `run` with the live defaults; with options but no command it runs `run`.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log detail")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    stream = _stream_options()

    run = commands.add_parser(
        "run",
        parents=[stream],
        help="stream headless until --frames/--seconds or Ctrl-C",
        description="Stream SOURCE through the model to every --out until --frames, --seconds "
        "or Ctrl-C; files are finalized and playable either way. Without --source it tries "
        f"{LIVE_SOURCE} and falls back to the demo; without --out it opens "
        f"{', '.join(LIVE_OUTPUTS)}, skipping any that cannot run here.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    io = run.add_argument_group("input and outputs")
    io.add_argument(
        "--source",
        metavar="SRC",
        help="webcam[:N|:/dev/videoN], screen[:N|:x,y,w,h], file:PATH or demo",
    )
    io.add_argument(
        "--out",
        action="append",
        metavar="SINK",
        help="virtualcam, window, file:PATH.mp4|.avi or mjpeg:[HOST:]PORT; repeatable",
    )
    _add_output_size(run)
    limits = run.add_mutually_exclusive_group()
    limits.add_argument("--frames", type=int, metavar="N", help="stop after N output frames")
    limits.add_argument(
        "--seconds", type=float, metavar="S", help="stop S seconds after the first frame"
    )
    run.add_argument(
        "--metrics",
        type=Path,
        metavar="FILE.jsonl",
        help="one JSON line per output frame (frame, t, latency_ms, prompt, mode, strength), "
        "then a summary line",
    )
    osc = run.add_argument_group("OSC control")
    osc.add_argument(
        "--osc-port",
        type=int,
        default=None,  # None: DEFAULT_PORT, and a busy one is only a warning (see _run)
        metavar="P",
        help=f"UDP port to listen on for /streamdit/... messages (default {DEFAULT_PORT})",
    )
    osc.add_argument(
        "--osc-host",
        default="127.0.0.1",
        metavar="H",
        help="address to listen on; 0.0.0.0 opens OSC to the network (default 127.0.0.1)",
    )
    osc.add_argument(
        "--osc-feedback",
        type=_host_port,
        metavar="HOST:PORT",
        help="send /streamdit/status/* here once a second (default: the last sender)",
    )
    osc.add_argument("--no-osc", action="store_true", help="do not listen for OSC")

    bench = commands.add_parser(
        "bench",
        parents=[stream],
        help="measure end-to-end fps and the time of each stage",
        description="Stream SOURCE for S seconds after warm-up without outputs (unless --out) "
        "and report fps, latency and per-stage times (capture, encode, step, decode, sink).",
    )
    bench.add_argument(
        "--source", metavar="SRC", help="default: demo in video mode, none in text mode"
    )
    bench.add_argument("--out", action="append", default=[], metavar="SINK")
    _add_output_size(bench)
    bench.add_argument("--seconds", type=float, default=10.0, metavar="S", help="default 10")
    bench.add_argument("--json", type=Path, metavar="FILE", help="also write the results here")

    gui = commands.add_parser(
        "gui",
        parents=[stream],
        help="the control app: pick a source and a preset, watch input and output",
        description="Open the control app. The options set where it starts (the model, its "
        "weights, a preset); the app remembers your source, preset and outputs.",
    )
    gui.add_argument("--source", metavar="SRC", help="start with this source (default: the last)")
    gui.add_argument(
        "--osc-port",
        type=int,
        default=DEFAULT_PORT,
        metavar="P",
        help=f"UDP port for /streamdit/... messages (default {DEFAULT_PORT})",
    )
    gui.add_argument("--no-osc", action="store_true", help="do not listen for OSC")
    gui.add_argument("--screenshot", type=Path, metavar="PNG", help=argparse.SUPPRESS)

    from streamdit_live.download import describe_catalog, models_dir

    download = commands.add_parser(
        "download",
        help="fetch a public model the app runs on a GPU (needs internet)",
        description="Fetch a named model from the Hugging Face Hub with progress; an "
        "interrupted download resumes where it stopped. Only the files the app reads are "
        "fetched. Then `--weights FOLDER` or the model's preset runs it (docs/WEIGHTS.md).",
        epilog="names:\n" + describe_catalog() + "\n\nexample:\n"
        f"  {PROG} download wan2.1-t2v-1.3b && {PROG} download taew2_1\n"
        f"  {PROG} run --preset wan-t2v",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    download.add_argument("name", metavar="NAME", help="which model (the names are below)")
    download.add_argument(
        "--to",
        type=Path,
        metavar="DIR",
        help="the folder to put the files in (default: <user data dir>/streamdit-live/"
        "models/NAME, where presets look; "
        f"here {models_dir()}/NAME)",
    )

    presets = commands.add_parser("presets", help="list or show presets")
    which = presets.add_subparsers(dest="presets_command", metavar="ACTION", required=True)
    which.add_parser("list", help="every preset, shipped and yours")
    show = which.add_parser("show", help="the values a preset runs with")
    show.add_argument("name", metavar="NAME")
    return parser


def resolve_controls(args: argparse.Namespace, library: PresetLibrary) -> Controls:
    """Schema defaults, then the preset, then the flags given on the command line."""
    controls = Controls()
    if args.preset:
        controls = library.get(args.preset).apply(controls)
    flags = {name: getattr(args, name) for name in _FLAG_CONTROLS}
    return controls.replace({k: v for k, v in flags.items() if v is not None})


@contextmanager
def _stop_on_signals(stop) -> Iterator[None]:
    """Ctrl-C and SIGTERM end the run cleanly (sinks flushed) instead of raising; a second
    one acts as usual (KeyboardInterrupt), in case the clean end hangs."""
    previous: dict[int, object] = {}

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    def handler(signum, frame) -> None:
        restore()
        stop()

    previous.update({sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)})
    try:
        yield
    finally:
        restore()


def _run(args: argparse.Namespace, library: PresetLibrary) -> int:
    from streamdit_live.session import Session

    plan = plan_from_args(args, resolve_controls(args, library), PlanKind.RUN)
    session = Session(plan, library)
    with _stop_on_signals(session.stop):
        summary = session.run()
    latency = summary["latency_p50_ms"]
    print(
        f"{PROG}: {summary['frames']} frames out ({summary['new_frames']} new) at "
        f"{summary['fps']:.1f} fps"
        + ("" if latency is None else f", latency p50 {latency:.0f} ms")
        + f", {summary['dropped_frames']} dropped."
    )
    return 0


def _presets(args: argparse.Namespace, library: PresetLibrary) -> int:
    if args.presets_command == "show":
        preset = library.get(args.name)
        print(f"# {preset.name} ({preset.origin}: {preset.path})")
        if preset.describe_needs():
            print(f"# needs {preset.describe_needs()}")
        print("# keys not in the file keep their defaults; all values shown:\n")
        print(to_toml(preset.apply(Controls()).to_dict(), preset.description), end="")
        return 0
    rows = []
    for item in library.all():
        if isinstance(item, PresetError):
            rows.append(("!", "invalid", "", str(item)))
        else:
            mode = item.apply(Controls()).mode.value
            rows.append((item.name, item.origin, mode, item.description))
    width = max([len(r[0]) for r in rows] + [4])
    print(f"{'NAME':<{width}}  {'FROM':<7}  {'MODE':<5}  DESCRIPTION")
    for name, origin, mode, description in rows:
        print(f"{name:<{width}}  {origin:<7}  {mode:<5}  {description}")
    print(f"\nyour presets: {library.dirs[-1][1]}")
    return 0


def _configure_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=level, format=f"{PROG}: %(message)s", stream=sys.stderr)
    if verbose < 2:  # third-party chatter stays out of the way unless asked for twice
        for noisy in ("transformers", "huggingface_hub", "PIL", "urllib3"):
            logging.getLogger(noisy).setLevel(logging.ERROR)


def display_problem() -> str | None:
    """Why the control app cannot open here (one sentence), or None if it can."""
    from importlib.util import find_spec

    if find_spec("PyQt6") is None:
        return "PyQt6 is not installed, so the control app cannot open"
    if os.environ.get("QT_QPA_PLATFORM", "").startswith(("offscreen", "minimal")):
        return "QT_QPA_PLATFORM asks for no display, so the control app does not open"
    if sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    ):
        return "No display was found (DISPLAY is not set), so the control app cannot open"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:  # the app where it can open, else the live defaults headless
        problem = display_problem()
        if problem is None:
            argv = ["gui"]
        else:
            print(f"{PROG}: {problem}; running headless with the live defaults.", file=sys.stderr)
    # No command means `run` with the live defaults: `streamdit-live --preset dream` works.
    leading = 0
    while leading < len(argv) and argv[leading] in _GLOBAL_FLAGS:
        leading += 1
    rest = argv[leading:]
    if not rest or rest[0] not in (*_COMMANDS, "-h", "--help"):
        argv = [*argv[:leading], "run", *rest]
    args = build_parser().parse_args(argv)
    _configure_logging(args.verbose, args.quiet)
    if args.command == "download":  # its progress bars are the point: no quieting below
        try:
            from streamdit_live.download import run as run_download

            return run_download(args.name, args.to, PROG)
        except ValueError as exc:
            print(f"{PROG}: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except RuntimeError as exc:  # DownloadError: no internet, refused by the hub
            print(f"{PROG}: {exc}", file=sys.stderr)
            return EXIT_FAILED
    if not args.verbose:
        # OpenCV's own camera-probing warnings and the text encoder's weight-loading bar
        # would bury our one-sentence messages.
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
        # FFmpeg's own lines ("moov atom not found" for a file that is not a video): read
        # by OpenCV when it first opens a file, so this comes before any source opens.
        os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    library = PresetLibrary.default()
    try:
        if args.command == "presets":
            return _presets(args, library)
        # run, bench, gui: a preset for a GPU or downloaded weights is checked here.
        args.weights = list(preset_weights(args.preset, library, args))
        if args.command == "bench":
            from streamdit_live.bench import run_bench

            return run_bench(args, resolve_controls(args, library), library)
        if args.command == "gui":
            from streamdit_live.gui import run_app

            problem = display_problem()
            if problem is not None and "QT_QPA_PLATFORM" not in os.environ:
                raise ValueError(f"{problem}; `{PROG} run` streams without it.")

            return run_app(args, resolve_controls(args, library), library)
        return _run(args, library)
    except ValueError as exc:
        # User mistakes: ControlError, PresetError, CheckpointError, SetupError, bad specs.
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except RuntimeError as exc:  # SessionError and friends: the run could not go on
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:  # a second Ctrl-C while the first one's clean end hung
        print(f"{PROG}: interrupted.", file=sys.stderr)
        return EXIT_INTERRUPTED
