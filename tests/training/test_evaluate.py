"""training/metrics.py on hand-made clips, and training/evaluate.py end to end on tiny."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from model.autoencoder import AE_CONFIGS, VideoAutoencoder
from model.bundle import TEXT_STUB, TextEncoderId, save_bundle, training_record
from model.checkpoint import save_checkpoint
from model.config import CONFIGS
from model.dit import StreamDiT
from model.stream import StreamMode
from training import metrics
from training.eval_runs import (
    StreamRun,
    StreamSettings,
    accuracy,
    held_out_scenes,
    run_stream,
    text_scores,
)
from training.evaluate import EvalConfig, Evaluation, load_models, main
from training.scenes import COLORS, render_scene

SIZE = 64


def square_clip(color=(230, 25, 25), step=(3, 0), start=(10, 26), frames=8, background=0):
    """A 12-pixel square of `color` moving `step` pixels per frame over a flat background."""
    clip = np.full((frames, SIZE, SIZE, 3), background, np.uint8)
    for f in range(frames):
        x, y = start[0] + step[0] * f, start[1] + step[1] * f
        clip[f, y : y + 12, x : x + 12] = color
    return clip


# --- metrics -----------------------------------------------------------------------------


def test_a_red_square_moving_right_reads_red_and_rightward():
    clip = square_clip()
    assert metrics.dominant_color(clip) == "red"
    assert metrics.motion_direction(clip) == "right"


@pytest.mark.parametrize(
    ("color", "step", "start", "direction"),
    [
        ("blue", (0, -3), (26, 42), "up"),
        ("green", (0, 3), (26, 10), "down"),
        ("yellow", (-3, 0), (42, 26), "left"),
        ("white", (2, 0), (10, 26), "right"),
    ],
)
def test_colour_and_direction_on_other_squares(color, step, start, direction):
    clip = square_clip(COLORS[color], step, start, background=50)
    assert metrics.dominant_color(clip) == color
    assert metrics.motion_direction(clip) == direction


@pytest.mark.parametrize(
    ("step", "direction_ok", "axis_ok"),
    [((-3, 0), True, True), ((3, 0), False, True), ((0, 3), False, False), ((0, 0), False, False)],
)
def test_text_scores_tell_the_axis_from_the_sign(step, direction_ok, axis_ok):
    # The prompt asks for red stripes moving left; the output moves `step` per frame.
    scene = held_out_scenes(1, frames=8)[0]
    assert scene.objects[0].color == "red" and scene.objects[0].direction.value == "left"
    clip = square_clip(step=step, start=(30, 26))
    run = StreamRun(
        prompt=scene.caption,
        mode=StreamMode.TEXT,
        strength=1.0,
        settings=StreamSettings(),
        latents=[],
        frames=clip,
        reference=clip,
        stages=4,
        warmup_chunks=4,
        startup_calls=4,
        steady_calls=2,
        seconds=0.1,
        chunk_frames=4,
    )
    entry = text_scores(scene, run)
    assert (entry["direction_ok"], entry["axis_ok"]) == (direction_ok, axis_ok)
    assert accuracy([entry, entry])["axis_accuracy"] == float(axis_ok)


def exit_and_entry_clip(frames=12, step=3):
    """Two blue squares moving up `step` pixels per frame: one leaves through the top edge
    while the next enters through the bottom, as an endless stream shows it."""
    clip = np.zeros((frames, SIZE, SIZE, 3), np.uint8)
    for f in range(frames):
        for top in (8 - step * f, SIZE + 4 - step * f):
            clip[f, max(top, 0) : max(top + 12, 0), 26:38] = COLORS["blue"]
    return clip


def test_objects_leaving_and_entering_read_the_way_they_move():
    clip = exit_and_entry_clip()
    ys = [np.nonzero(frame[..., 2])[0].mean() for frame in clip]
    assert ys[-1] > ys[0] + 20  # the colour's centroid moves down the frame ...
    assert metrics.motion_direction(clip) == "up"  # ... while every square moves up
    assert metrics.motion_direction(clip[::-1]) == "down"


def test_a_static_clip_has_no_motion():
    assert metrics.motion_direction(square_clip(step=(0, 0))) is None


def test_a_clip_without_colour_has_no_colour_nor_motion():
    gray = np.full((4, SIZE, SIZE, 3), 60, np.uint8)
    assert metrics.dominant_color(gray) is None
    assert metrics.motion_direction(gray) is None


def test_the_held_out_prompts_drawn_read_back_as_their_words():
    scenes = held_out_scenes(9, frames=16)
    assert len({s.caption for s in scenes}) == 9
    for scene in scenes:
        clip = render_scene(scene, 16, SIZE, SIZE)
        want = scene.objects[0]
        assert metrics.dominant_color(clip) == want.color, scene.caption
        assert metrics.motion_direction(clip) == want.direction.value, scene.caption


def test_an_unchanged_clip_keeps_all_its_structure():
    clip = square_clip(background=40) + np.arange(SIZE, dtype=np.uint8)[None, None, :, None]
    assert metrics.structure_correlation(clip, clip) == pytest.approx(1.0)
    assert metrics.edge_correlation(clip, clip) == pytest.approx(1.0)
    assert metrics.ssim(clip, clip) == pytest.approx(1.0)


def test_noise_keeps_no_structure():
    clip = square_clip(background=40)
    noise = np.random.default_rng(0).integers(0, 256, clip.shape, dtype=np.uint8)
    assert abs(metrics.structure_correlation(clip, noise)) < 0.3
    assert metrics.ssim(clip, noise) < 0.1


def test_a_gray_clip_has_no_saturation():
    gray = np.full((2, 8, 8, 3), 180, np.uint8)
    look = metrics.look(gray)
    assert look.saturation == 0.0
    assert (look.red, look.green, look.blue) == (180.0, 180.0, 180.0)
    assert metrics.look_matches("a pencil sketch", look) is True


def test_named_looks_are_told_apart():
    def flat(rgb):
        return np.full((2, 8, 8, 3), rgb, np.uint8)

    sepia, neon, thermal = flat((150, 115, 80)), flat((30, 80, 200)), flat((200, 20, 140))
    checks = {
        name: [metrics.look_matches(name, metrics.look(c)) for c in (sepia, neon, thermal)]
        for name in ("an old sepia photograph", "a blue neon glow", "a thermal camera image")
    }
    assert checks == {
        "an old sepia photograph": [True, False, False],
        "a blue neon glow": [False, True, False],
        "a thermal camera image": [False, False, True],
    }
    noise = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    assert not any(metrics.look_matches(name, metrics.look(noise)) for name in metrics.LOOK_CHECKS)
    assert metrics.look_matches("a pencil sketch", metrics.look(sepia)) is False
    assert metrics.look_matches("a watercolor painting", metrics.look(sepia)) is None


def test_jumps_at_chunk_borders_raise_the_seam_ratio():
    ramp = np.arange(16, dtype=np.uint8) * 4  # 4 levels per frame, smooth
    smooth = np.broadcast_to(ramp[:, None, None, None], (16, 8, 8, 3)).copy()
    jumpy = smooth.copy()
    for start in range(4, 16, 4):  # chunks of 4 frames, each border adds a jump of 40
        jumpy[start:] += 40
    assert metrics.seam_ratio(smooth, 4) == pytest.approx(1.0, abs=1e-3)
    assert metrics.seam_ratio(jumpy, 4) > 5 * metrics.seam_ratio(smooth, 4)
    assert metrics.frame_changes(smooth) == pytest.approx(np.full(15, 4.0))
    with pytest.raises(ValueError, match="two chunks"):
        metrics.seam_ratio(smooth[:4], 4)


def test_psnr_of_known_errors():
    a = np.zeros((1, 4, 4, 3), np.uint8)
    assert metrics.psnr(metrics.mse(a, a)) == metrics.PSNR_CAP
    assert metrics.psnr(0.01) == pytest.approx(20.0)
    b = np.full_like(a, 255)
    assert metrics.mse(a, b) == pytest.approx(1.0)


# --- the stream and the command line -------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    """A random tiny DiT and its autoencoder, paired as training records them."""
    folder = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    ae = VideoAutoencoder(AE_CONFIGS["tiny"])
    ae.save(folder / "autoencoder.safetensors")
    record = training_record(ae, TextEncoderId(TEXT_STUB, ""), [(SIZE, SIZE)], "tiny")
    dit = StreamDiT(CONFIGS["tiny"])
    save_checkpoint(folder / "streamdit_ema.safetensors", dit, dit.cfg, "streamdit", record)
    return folder


def _beside(tiny_weights, folder, dit, extra=None):
    """Save `dit` in `folder` with a copy of the tiny autoencoder, recorded as trained on it."""
    ae_file = tiny_weights / "autoencoder.safetensors"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ae_file.name).write_bytes(ae_file.read_bytes())
    ae = VideoAutoencoder.load(ae_file)
    record = training_record(ae, TextEncoderId(TEXT_STUB, ""), [(SIZE, SIZE)], "tiny")
    record.update(extra or {})
    save_checkpoint(folder / "streamdit_ema.safetensors", dit, dit.cfg, "streamdit", record)
    return folder


@pytest.fixture(scope="module")
def other_teacher(tiny_weights, tmp_path_factory):
    """Another tiny DiT on the same autoencoder, every weight random (no zero-init head)."""
    torch.manual_seed(1)
    dit = StreamDiT(CONFIGS["tiny"])
    with torch.no_grad():
        for p in dit.parameters():
            p.normal_(0.0, 0.05)
    return _beside(tiny_weights, tmp_path_factory.mktemp("teacher"), dit)


def test_video_mode_streams_as_the_engine_feeds_it(tiny_weights):
    models = load_models([tiny_weights], torch.device("cpu"))
    footage = np.random.default_rng(0).integers(0, 256, (64, SIZE, SIZE, 3), dtype=np.uint8)
    settings = StreamSettings(chunk_size=1, steps=2)
    run = run_stream(
        models, settings, "a pencil sketch", 3, SIZE, 0, footage, StreamMode.VIDEO, 0.5
    )
    # N = 4 stages, strength 0.5 keeps 2: the first chunk out entered at noise 1/4, not 1/2.
    assert run.warmup_chunks == 1 and len(run.latents) == 3
    assert run.frames.shape == (12, SIZE, SIZE, 3) and run.frames.dtype == np.uint8
    assert np.array_equal(run.reference, footage[4:16])  # output chunk k is input chunk k
    assert run.calls_per_frame == pytest.approx(2 / 4)  # s calls per 4-frame chunk
    assert run.startup_calls == 0


def test_fewer_levels_let_a_chunk_out_after_fewer_stages(tiny_weights):
    """2 levels instead of the buffer's 4: strength 0.5 keeps 1 stage, so no warm-up chunk,
    and output chunk k is still input chunk k."""
    models = load_models([tiny_weights], torch.device("cpu"))
    footage = np.random.default_rng(0).integers(0, 256, (64, SIZE, SIZE, 3), dtype=np.uint8)
    settings = StreamSettings(chunk_size=1, steps=1, levels=2)
    run = run_stream(models, settings, "a sketch", 3, SIZE, 0, footage, StreamMode.VIDEO, 0.5)
    assert run.stages == 1 and run.warmup_chunks == 0
    assert np.array_equal(run.reference, footage[:12])
    assert run.calls_per_frame == pytest.approx(1 / 4)


def _strict_json(text: str) -> dict:
    def refuse(value: str) -> None:
        raise ValueError(f"{value} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_cli_writes_a_report_and_a_contact_sheet(tiny_weights, tmp_path, capsys):
    out = tmp_path / "eval"
    code = main([str(tiny_weights), "--out", str(out), "--no-progress", "--threads", "1"])
    assert code == 0
    report = _strict_json((out / "report.json").read_text())
    assert report["size"] == SIZE
    assert len(report["text"]["prompts"]) == 4
    assert 0.0 <= report["text"]["color_accuracy"] <= 1.0
    strengths = {e["strength"] for e in report["video"]["runs"]}
    assert strengths == {0.3, 0.5, 0.8} and len(report["video"]["runs"]) == 12
    # At initialization the DiT predicts zero velocity (adaLN-Zero), so each output is its
    # input noised to the strength's level: less structure survives a higher strength.
    assert report["video"]["structure_falls"] is True
    assert report["speed"]["text"]["model_calls_per_frame"] == pytest.approx(0.25)
    assert report["speed"]["text"]["fps"] > 0
    assert set(report["targets"]) and "agreement" not in report
    sheet = cv2.imread(str(out / "contact_sheet.png"))
    assert sheet is not None and sheet.shape[0] > 16 * SIZE  # a row per run
    printed = capsys.readouterr().out
    assert "held-out prompts" in printed and "contact_sheet.png" in printed


def test_text_mode_runs_at_its_own_size(tiny_weights):
    """A model trained on whole scenes at a crop size and on footage at a bigger one is
    judged at each: --text-size for text mode, --size for video to video."""
    models = load_models([tiny_weights], torch.device("cpu"))
    cfg = EvalConfig(
        text_size=32, prompts=1, chunks=1, strengths=(0.5,), styles=("a blue neon glow",)
    )
    evaluation = Evaluation(models, cfg)
    report = evaluation.run(progress=False)
    assert (report["size"], report["text_size"]) == (SIZE, 32)
    text_row, video_row = evaluation.rows
    assert text_row.left.shape[1:3] == text_row.right.shape[1:3] == (32, 32)
    assert video_row.right.shape[1:3] == (SIZE, SIZE)


def test_a_model_agrees_exactly_with_itself(tiny_weights, tmp_path):
    out = tmp_path / "eval"
    args = [str(tiny_weights), "--teacher", str(tiny_weights), "--out", str(out)]
    small = ["--prompts", "2", "--chunks", "2", "--strengths", "0.5", "--style", "a blue neon glow"]
    assert main([*args, *small, "--no-progress", "--threads", "1"]) == 0
    agreement = _strict_json((out / "report.json").read_text())["agreement"]
    assert len(agreement["chunks"]) == 3 * 2  # two text prompts and one video run, 2 chunks
    assert agreement["latent_mse"] == 0.0 and agreement["pixel_mse"] == 0.0
    assert agreement["psnr"] == metrics.PSNR_CAP
    assert agreement["table"]["teacher"] == agreement["table"]["student"] | {
        "fps": agreement["table"]["teacher"]["fps"]
    }


def test_a_dit_without_its_autoencoder_is_refused(tiny_weights, tmp_path, capsys):
    code = main([str(tiny_weights / "streamdit_ema.safetensors"), "--out", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert not (tmp_path / "report.json").exists()


def test_another_teacher_disagrees_and_costs_what_it_asks(tiny_weights, other_teacher, tmp_path):
    out = tmp_path / "eval"
    args = [str(tiny_weights), "--teacher", str(other_teacher), "--out", str(out)]
    small = ["--prompts", "1", "--chunks", "2", "--strengths", "0.5", "--style", "a blue neon glow"]
    teacher = ["--teacher-steps", "3", "--teacher-guidance", "2"]
    assert main([*args, *small, *teacher, "--no-progress", "--threads", "1"]) == 0
    agreement = _strict_json((out / "report.json").read_text())["agreement"]
    assert agreement["teacher"] == {"chunk_size": 1, "steps": 3, "guidance": 2.0, "levels": 0}
    assert all(c["latent_mse"] > 0 and c["psnr"] < metrics.PSNR_CAP for c in agreement["chunks"])
    table = agreement["table"]
    assert table["teacher"]["model_calls_per_frame"] == pytest.approx(3 / 4)
    assert table["teacher"]["network_passes_per_frame"] == pytest.approx(2 * 3 / 4)
    assert table["student"]["model_calls_per_frame"] == pytest.approx(1 / 4)


def test_a_student_names_how_its_teacher_samples(tiny_weights, other_teacher, tmp_path):
    """Distillation records the teacher's sampling in the student; it is the default."""
    record = {"micro_steps": "1", "guidance": "1.0"}
    record |= {"teacher_micro_steps": "2", "teacher_guidance": "3.0"}
    student = _beside(tiny_weights, tmp_path / "student", StreamDiT(CONFIGS["tiny"]), record)
    out = tmp_path / "eval"
    args = [str(student), "--teacher", str(other_teacher), "--out", str(out), "--prompts", "1"]
    small = ["--chunks", "2", "--strengths", "0.5", "--style", "a pencil sketch"]
    assert main([*args, *small, "--no-progress", "--threads", "1"]) == 0
    report = _strict_json((out / "report.json").read_text())
    assert report["student"] == {"chunk_size": 1, "steps": 1, "guidance": 1.0, "levels": 0}
    assert report["agreement"]["teacher"] == {
        "chunk_size": 1,
        "steps": 2,
        "guidance": 3.0,
        "levels": 0,
    }


def test_a_teacher_on_another_autoencoder_is_refused(tiny_weights, tmp_path, capsys):
    torch.manual_seed(5)
    ae = VideoAutoencoder(AE_CONFIGS["tiny"])
    ae.save(tmp_path / "teacher" / "autoencoder.safetensors")
    record = training_record(ae, TextEncoderId(TEXT_STUB, ""), [(SIZE, SIZE)], "tiny")
    dit = StreamDiT(CONFIGS["tiny"])
    save_checkpoint(tmp_path / "teacher" / "dit.safetensors", dit, dit.cfg, "streamdit", record)
    args = [str(tiny_weights), "--teacher", str(tmp_path / "teacher"), "--out", str(tmp_path)]
    assert main([*args, "--no-progress"]) == 2
    assert "share one autoencoder" in capsys.readouterr().err


def test_a_bundle_loads_with_its_parts(tiny_weights, tmp_path):
    pair = load_models([tiny_weights], torch.device("cpu"))
    path = save_bundle(
        tmp_path / "tiny.safetensors",
        pair.dit,
        pair.ae,
        text_encoder=TextEncoderId(TEXT_STUB, ""),
        trained_sizes=[(SIZE, SIZE)],
    )
    bundle = load_models([path], torch.device("cpu"))
    assert bundle.info.model == "tiny" and bundle.info.default_size == (SIZE, SIZE)
    for a, b in zip(bundle.dit.parameters(), pair.dit.parameters(), strict=True):
        assert torch.equal(a, b)
