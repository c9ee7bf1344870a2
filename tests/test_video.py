"""Videos as input: real ENTRep images written as videos, decoded back, indexed with timestamps; broken ones skipped."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from agent.cli import app
from retrieval.manifest import file_sha256
from retrieval.preprocess import load_image
from retrieval.video import (
    NEAR_MAD, VideoLoadError, display_name, extract_frames, format_timestamp, frame_id, parse_every, sample_frames,
)

av = pytest.importorskip("av", reason="PyAV (the `av` package) is not installed")
runner = CliRunner()


def write_video(path: Path, images: list[Path], seconds_each: float, fps: int = 5, codec: str = "mpeg4") -> Path:
    """Each image held still for `seconds_each` seconds at `fps`, 640x480 (the ENTRep size)."""
    from PIL import Image

    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = 640, 480, "yuv420p"
        for p in images:
            frame = av.VideoFrame.from_image(Image.open(p).convert("RGB").resize((640, 480)))
            for _ in range(max(1, round(seconds_each * fps))):
                for packet in stream.encode(frame):
                    out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def write_audio_only(path: Path) -> Path:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=16000)
        for i in range(10):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


@pytest.fixture(scope="module")
def real_images(entrep_train) -> list[Path]:
    return sorted((entrep_train / "imgs").glob("*.png"))


def test_every_accepts_seconds_and_milliseconds():
    assert [parse_every(x) for x in ("1s", "2s", "0.5s", "500ms", "1.5", " 250 ms ")] == [1, 2, 0.5, 0.5, 1.5, 0.25]
    for bad in ("", "fast", "0s", "-1s", "1 min", "0.0001s"):
        with pytest.raises(ValueError):
            parse_every(bad)


def test_timestamps_and_display_names():
    assert format_timestamp(83) == "00:01:23"
    assert format_timestamp(3600 * 2 + 5.5) == "02:00:05.5"
    assert display_name({"video": "/a/exam.mp4", "t": 83.0, "path": "/x/ab.jpg"}) == "exam.mp4 @ 00:01:23"
    assert display_name({"path": "/a/b/img.png"}) == "img.png"
    assert display_name({"name": "given.png", "path": "/a/b/img.png"}) == "given.png"


def test_held_frames_are_dropped_and_distinct_real_images_never_are(real_images, tmp_path):
    # Every real image for one second, sampled once a second: all 70 are different views (the two files with
    # identical bytes are not neighbours in name order), so none may be taken for a near-identical frame.
    video = write_video(tmp_path / "all.mp4", real_images, seconds_each=1, fps=5)
    frames = list(sample_frames(video, every=1.0))
    assert [t for t, _, _ in frames] == [float(i) for i in range(len(real_images))]
    assert not any(near for _, _, near in frames), f"a real image was merged into its neighbour (NEAR_MAD={NEAR_MAD})"
    # Each image held for 3 s: the 2nd and 3rd one-second samples are the same view, through the codec.
    held = write_video(tmp_path / "held.mp4", real_images[:3], seconds_each=3, fps=5)
    assert [(t, near) for t, _, near in sample_frames(held, every=1.0)] == [
        (0.0, False), (1.0, True), (2.0, True), (3.0, False), (4.0, True), (5.0, True), (6.0, False), (7.0, True), (8.0, True)]
    assert [t for t, _, near in sample_frames(held, every=0.5) if not near] == [0.0, 3.0, 6.0]


def test_frame_ids_depend_on_content_and_time_only(real_images, tmp_path):
    video = write_video(tmp_path / "exam.mp4", real_images[:3], seconds_each=2, fps=5)
    sha = file_sha256(video)
    one = extract_frames(video, sha, tmp_path / "frames", every=1.0)
    assert (one.sampled, one.near_duplicates) == (6, 3)
    assert [f.t for f in one.kept] == [0.0, 2.0, 4.0]
    assert [f.id for f in one.kept] == [frame_id(sha, t) for t in (0.0, 2.0, 4.0)]
    # Content: a video of other images, frames kept at the same times, gets other ids; the same bytes under
    # another name get the same ones.
    other = write_video(tmp_path / "other.mp4", real_images[3:6], seconds_each=2, fps=5)
    theirs = extract_frames(other, file_sha256(other), tmp_path / "frames", every=1.0)
    assert [f.t for f in theirs.kept] == [0.0, 2.0, 4.0]
    assert not {f.id for f in theirs.kept} & {f.id for f in one.kept}
    copy = shutil.copyfile(video, tmp_path / "renamed.mp4")
    assert [f.id for f in extract_frames(copy, file_sha256(copy), tmp_path / "frames", every=1.0).kept] == \
        [f.id for f in one.kept]
    # Another --every keeps frames at the same times under the same ids (and reuses their JPEGs).
    two = extract_frames(video, sha, tmp_path / "frames", every=2.0)
    assert [f.id for f in two.kept] == [f.id for f in one.kept]
    img = load_image(one.kept[1].path)
    assert img.size == (640, 480)
    # The cached JPEG is the decoded frame: close to the source image it was written from.
    src = np.asarray(load_image(real_images[1]).resize((640, 480)), dtype=np.float32)
    assert np.abs(np.asarray(img, dtype=np.float32) - src).mean() < 8


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("make, reason", [
    (lambda d, v: _write(d / "empty.mkv", b""), "empty file"),
    (lambda d, v: _write(d / "cut.mp4", v.read_bytes()[: v.stat().st_size // 2]), "not a readable video"),
    (lambda d, v: _write(d / "noise.avi", b"\x00not a video" * 200), "not a readable video"),
    (lambda d, v: write_audio_only(d / "voice.mov"), "no video stream (audio only)"),
], ids=["empty", "cut-mp4", "noise", "audio-only"])
def test_broken_videos_fail_with_one_line_reason(real_images, tmp_path, make, reason):
    good = write_video(tmp_path / "good.mp4", real_images[:2], seconds_each=2, fps=5)
    bad = make(tmp_path, good)
    with pytest.raises(VideoLoadError) as e:
        list(sample_frames(bad))
    assert reason in str(e.value) and "\n" not in str(e.value)


def small_mkv(path: Path, seconds: int = 10, fps: int = 5) -> Path:
    """64x48, a different grey each frame (no two samples near-identical): small and fast to write."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(seconds * fps):
            img = np.full((48, 64, 3), (i * 7) % 256, np.uint8)
            img[:, (i * 3) % 64] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def claim_duration(path: Path, out: Path, ms: float) -> Path:
    """A copy whose Matroska header (the Duration element, 0x4489, an 8-byte float) claims `ms` milliseconds."""
    import struct

    data = path.read_bytes()
    at = data.find(b"\x44\x89\x88")
    assert at > 0, "no 8-byte Duration element"
    out.write_bytes(data[: at + 3] + struct.pack(">d", ms) + data[at + 11:])
    return out


def cut_at(path: Path, out: Path, seconds: float) -> Path:
    """A copy cut a few bytes into the first packet at or after `seconds` (a copy that stopped there)."""
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        pos = next(p.pos for p in c.demux(stream) if p.pts is not None and p.pts * stream.time_base >= seconds)
    out.write_bytes(path.read_bytes()[: pos + 7])
    return out


def test_a_header_claiming_10_min_keeps_all_10_s_of_frames_and_says_so(tmp_path):
    whole = small_mkv(tmp_path / "whole.mkv")
    long = claim_duration(whole, tmp_path / "claims-10min.mkv", 600_000.0)
    stopped: list[str] = []
    times = [t for t, _, _ in sample_frames(long, stopped=stopped)]
    assert times == [float(s) for s in range(10)]
    assert len(stopped) == 1 and "50 decoded" in stopped[0] and "00:00:09.8" in stopped[0]
    assert "00:10:00" in stopped[0] and "\n" not in stopped[0]
    stats = extract_frames(long, "ab" * 32, tmp_path / "frames")
    assert len(stats.kept) == 10 and stats.stopped == stopped[0]
    with pytest.raises(VideoLoadError, match="damaged: frames stop at 00:00:09.8"):  # no list: strict
        list(sample_frames(long))


def test_a_truncated_matroska_keeps_the_5_s_before_the_cut(tmp_path):
    cut = cut_at(small_mkv(tmp_path / "whole.mkv"), tmp_path / "cut.mkv", 5.0)
    stats = extract_frames(cut, "cd" * 32, tmp_path / "frames")
    assert [f.t for f in stats.kept] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert all(Path(f.path).is_file() for f in stats.kept)
    assert "frames stop at 00:00:04.8" in stats.stopped and "truncated" in stats.stopped, stats.stopped
    whole = extract_frames(tmp_path / "whole.mkv", "ef" * 32, tmp_path / "frames")
    assert whole.stopped is None and len(whole.kept) == 10


@pytest.mark.slow
def test_index_videos_beside_images(real_store, real_images, tmp_path, monkeypatch):
    _, bundle = real_store
    home = tmp_path / "home"
    folder = tmp_path / "archive"
    (folder / "exams").mkdir(parents=True)
    write_video(folder / "exams" / "exam.mp4", real_images[:4], seconds_each=2, fps=5)
    whole = write_video(tmp_path / "other.mp4", real_images[4:6], seconds_each=2, fps=5)
    _write(folder / "exams" / "cut.mp4", whole.read_bytes()[:3000])
    write_audio_only(folder / "exams" / "voice.mp4")
    (folder / "still.png").write_bytes(real_images[10].read_bytes())
    args = ["index", str(folder), "--bundle", str(bundle), "--home", str(home), "--store", "videos", "--json"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    first = json.loads(r.stdout)
    assert (first["indexed"], first["already_present"], first["count"]) == (5, 0, 5)
    reasons = {Path(s["path"]).name: s["reason"] for s in first["skipped"]}
    assert set(reasons) == {"cut.mp4", "voice.mp4"} and first["partial"] == []
    assert reasons["voice.mp4"] == "no video stream (audio only)"

    from store.gallery import Gallery

    with Gallery.open("videos", home=home) as g:
        metas = [m for _, m in g.all_metadata()]
    frames = sorted((m for m in metas if "video" in m), key=lambda m: m["t"])
    assert [m["name"] for m in frames] == [f"exam.mp4 @ 00:00:0{s}" for s in (0, 2, 4, 6)]
    assert all(m["video"] == str((folder / "exams" / "exam.mp4").resolve()) for m in frames)
    assert all(Path(m["path"]).is_file() and Path(m["path"]).is_relative_to(home / "frames") for m in frames)
    assert all("label" not in m for m in frames)  # cls.json names images, not video frames

    # The frame of real image #2 is found first when searched by that image, and named by video and time.
    monkeypatch.setenv("KGER_HOME", str(home))
    r = runner.invoke(app, ["search", "--image", str(real_images[2]), "--store", "videos", "-k", "2", "--json"])
    assert r.exit_code == 0, r.output
    top = json.loads(r.stdout)["results"][0]
    assert top["name"] == "exam.mp4 @ 00:00:04" and top["path"].endswith(".jpg")

    again = json.loads(runner.invoke(app, args).stdout)  # idempotent: nothing encoded twice
    assert (again["indexed"], again["already_present"], again["count"]) == (0, 5, 5)


@pytest.mark.slow
def test_index_keeps_frames_of_damaged_videos_and_says_where_they_stop(real_store, tmp_path):
    """issue 22 row 4: both were skipped whole as 'truncated', exit 0; now 10 + 5 frames, each video named."""
    _, bundle = real_store
    folder = tmp_path / "exams"
    folder.mkdir()
    whole = small_mkv(tmp_path / "whole.mkv")
    claim_duration(whole, folder / "claims-10min.mkv", 600_000.0)
    cut_at(whole, folder / "cut.mkv", 5.0)
    r = runner.invoke(app, ["index", str(folder), "--bundle", str(bundle), "--home", str(tmp_path / "home"),
                            "--store", "damaged", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert (doc["indexed"], doc["skipped"]) == (15, [])
    stopped = {Path(p["path"]).name: p["stopped"] for p in doc["partial"]}
    assert stopped["claims-10min.mkv"].startswith("kept 10 frames; frames stop at 00:00:09.8 after 50 decoded")
    assert stopped["cut.mkv"].startswith("kept 5 frames; frames stop at 00:00:04.8")
    assert "partly indexed" in r.stderr
