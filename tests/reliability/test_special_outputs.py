"""Issue 19, rules 1 and 5: outputs never replace what is not a regular file of ours, no
output check blocks, and every legal file name works.

Devices, FIFOs, ``-`` and ``/dev/stdout`` are written through (streamed), never renamed
over; block devices and sockets are refused; names of up to 255 bytes, and names that
are not UTF-8, work as outputs, as inputs, and as heat-map names.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from cli_checks import one_line_error
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anomem import AnoMem
from anomem.cli import main
from anomem.errors import CheckpointError, OutputError
from anomem.io.checkpoint import NAME_MAX, atomic_write_text, is_stream, is_temp_of, temp_prefix
from anomem.io.outputs import MARKER, check_file_target, file_kind, unique_names
from anomem.io.staging import StagedDir

SRC = str(Path(__file__).resolve().parents[2] / "src")


def run_cli(*argv, **kwargs) -> subprocess.CompletedProcess:
    """`python -m anomem.cli ARGV` in a real process (real stdout, real signals)."""
    return subprocess.run([sys.executable, "-m", "anomem.cli", *map(str, argv)], timeout=120,
                          env={**os.environ, "PYTHONPATH": SRC}, **kwargs)


class FifoReader:
    """A thread that reads a FIFO to its end (the other side of `score --out FIFO`)."""

    def __init__(self, path: Path) -> None:
        self.data = b""
        self.thread = threading.Thread(target=self._read, args=(path,), daemon=True)
        self.thread.start()

    def _read(self, path: Path) -> None:
        with open(path, "rb") as f:
            self.data = f.read()

    def join(self) -> bytes:
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "the FIFO was never written and closed"
        return self.data


def _char_device(tmp_path: Path) -> Path:
    """A character device of our own (the same as /dev/null), so no test touches the system's."""
    dev = tmp_path / "null"
    try:
        os.mknod(dev, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    except (PermissionError, OSError):
        pytest.skip("creating a device node needs root")
    return dev


def test_score_out_to_a_character_device_streams_and_keeps_the_device(model_copy, images_copy, tmp_path, capsys):
    dev = _char_device(tmp_path)
    assert main(["score", str(model_copy), str(images_copy), "--out", str(dev)]) == 0
    assert stat.S_ISCHR(os.stat(dev).st_mode), "the device was replaced by a file"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".null.")]
    assert "scored 6 images" in capsys.readouterr().err  # the summary never joins a stream's data
    # the system's /dev/null is only ever classified here, never written by a test
    assert is_stream("/dev/null") and file_kind(Path("/dev/null")) == "stream"
    assert is_stream("/proc/self/fd/1") and is_stream("/dev/stdout")  # our own stdout
    assert not is_stream("/proc/sys/kernel/hostname")  # other /proc files are not streams: never written through


def test_score_out_to_a_fifo_with_a_reader_streams_and_never_blocks_the_check(model_copy, images_copy, tmp_path, capsys):
    fifo = tmp_path / "f.csv"
    os.mkfifo(fifo)
    assert file_kind(fifo) == "stream"  # only stat: a check that opened it would block here
    check_file_target("--out", fifo, ("text",))
    reader = FifoReader(fifo)
    assert main(["score", str(model_copy), str(images_copy), "--out", str(fifo)]) == 0
    text = reader.join().decode()
    assert text.startswith("path,score") and len(text.splitlines()) == 7
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_a_fifo_planted_as_the_folder_marker_never_blocks_the_check(model_copy, images_copy, tmp_path, capsys):
    maps = tmp_path / "maps"
    maps.mkdir()
    os.mkfifo(maps / MARKER)  # nobody writes it: reading it would block for ever
    done = []
    worker = threading.Thread(target=lambda: done.append(main(["score", str(model_copy), str(images_copy),
                                                               "--maps", str(maps)])), daemon=True)
    worker.start()
    worker.join(timeout=60)
    assert done == [2], "the output check blocked on a FIFO"
    one_line_error(capsys, "not empty")
    assert stat.S_ISFIFO(os.lstat(maps / MARKER).st_mode)


@pytest.mark.parametrize("how", ["-", "/dev/stdout"])
def test_dash_and_dev_stdout_are_stdout(model_copy, images_copy, tmp_path, how):
    """In a real process, stdout redirected to a file: the file holds the CSV alone."""
    out = tmp_path / "captured.csv"
    with open(out, "wb") as f:
        proc = run_cli("score", model_copy, images_copy, "--out", how, stdout=f, stderr=subprocess.PIPE)
    assert proc.returncode == 0, proc.stderr.decode()
    lines = out.read_text().splitlines()
    assert lines[0].startswith("path,score") and len(lines) == 7
    assert os.path.islink("/dev/stdout") or not os.path.exists("/dev/stdout") or is_stream("/dev/stdout")


@pytest.mark.parametrize("cmd", [["export", "{m}", "--format", "torchscript"], ["threshold", "{m}", "--fpr", "0.2"],
                                 ["refit", "{m}", "--anomalies", "{a}"]])
def test_binary_outputs_to_stdout_hold_only_the_file(cmd, model_copy, folder_dataset, tmp_path):
    """`--out -` streams the file alone; the command's summary goes to stderr."""
    argv = [a.format(m=model_copy, a=folder_dataset / "test" / "anomaly") for a in cmd]
    proc = run_cli(*argv, "--out", "-", capture_output=True)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.startswith(b"PK\x03\x04") and b"->" in proc.stderr
    (tmp_path / "out.bin").write_bytes(proc.stdout)
    if cmd[0] != "export":  # a whole checkpoint came through the pipe
        assert AnoMem.load(tmp_path / "out.bin").threshold_ is not None


def test_a_reader_that_goes_away_ends_the_command_quietly(model_copy, images_copy):
    proc = subprocess.Popen([sys.executable, "-m", "anomem.cli", "score", str(model_copy), str(images_copy)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": SRC})
    proc.stdout.close()  # `anomem score … | head -c 0`: the reader is gone before the scores come
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and "Traceback" not in err and "Exception ignored" not in err, err


def test_block_devices_and_sockets_are_refused(tmp_path, model_copy, images_copy, capsys):
    sock_path = tmp_path / "s.csv"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(sock_path))
    try:
        assert file_kind(sock_path) == "special"
        assert main(["score", str(model_copy), str(images_copy), "--out", str(sock_path)]) == 2
        one_line_error(capsys, "a socket")
        with pytest.raises(CheckpointError, match="a socket"):
            atomic_write_text(sock_path, "x")
        assert stat.S_ISSOCK(os.stat(sock_path).st_mode)
    finally:
        server.close()
    block = tmp_path / "disk"
    try:
        os.mknod(block, 0o600 | stat.S_IFBLK, os.makedev(7, 250))  # a loop device number nothing uses
    except OSError:
        return  # not root
    assert main(["score", str(model_copy), str(images_copy), "--out", str(block)]) == 2
    one_line_error(capsys, "a block device")
    assert stat.S_ISBLK(os.lstat(block).st_mode)


@pytest.mark.parametrize("cmd", [["score", "{m}", "{i}", "--maps", "-"], ["evaluate", "{m}", "--data", "{d}", "--out", "-"],
                                 ["train", "--data", "{d}", "--out", "-"], ["demo", "--out", "-"],
                                 ["benchmark", "--data", "digits", "--out", "-"]])
def test_a_directory_output_cannot_be_a_stream(cmd, model_copy, images_copy, folder_dataset, capsys):
    argv = [a.format(m=model_copy, i=images_copy, d=folder_dataset) for a in cmd]
    assert main(argv) == 2
    one_line_error(capsys, "must be a directory")


# -- rule 5: every legal name -------------------------------------------------------
name_bytes = st.one_of(
    st.binary(min_size=1, max_size=NAME_MAX).filter(lambda b: b"/" not in b and b"\x00" not in b
                                                   and b not in (b".", b"..")),
    st.integers(200, NAME_MAX).map(lambda n: b"a" * n),
    st.integers(60, 85).map(lambda n: "é€".encode() * (n // 2)),  # multi-byte characters cut mid-way
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=name_bytes)
def test_any_legal_name_is_written_atomically_and_can_name_a_heat_map_folder(tmp_path, raw):
    name = os.fsdecode(raw[:NAME_MAX])
    d = tmp_path / "names"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir()
    prefix = temp_prefix(name)
    assert len(os.fsencode(prefix)) + 13 <= NAME_MAX and is_temp_of(prefix + "abcd_123.tmp", name)
    atomic_write_text(d / name, "one")
    atomic_write_text(d / name, "two")  # replaces it
    assert (d / name).read_text() == "two" and os.listdir(d) == [name]
    (d / name).unlink()
    with StagedDir("--maps", d / name, "score --maps") as staged:  # the name as a folder of heat-maps
        for n in unique_names([f"x/{name}.png", f"y/{name}.png"], ".npy"):
            assert len(os.fsencode(n)) <= NAME_MAX
            atomic_write_text(staged.path / n, "m")
        staged.commit()
    assert len(os.listdir(d / name)) == 3 and os.listdir(d) == [name]  # two maps and the marker


@pytest.mark.parametrize("fmt", ["png", "figure"])
def test_long_and_non_utf8_image_names_score_with_maps(model_copy, images_copy, tmp_path, capsys, fmt):
    src = sorted(images_copy.glob("*.png"))
    long_name = "L" * (NAME_MAX - 4) + ".png"  # 255 bytes
    odd_name = os.fsdecode(b"caf\xe9-\xff.png")  # Latin-1 bytes: not UTF-8
    shutil.copy(src[0], images_copy / long_name)
    shutil.copy(src[1], images_copy / odd_name)
    out, maps = tmp_path / "s.csv", tmp_path / ("M" * 200)
    assert main(["score", str(model_copy), str(images_copy), "--out", str(out), "--maps", str(maps), "--maps-format", fmt]) == 0
    raw = out.read_bytes()
    assert b"caf\xe9-\xff.png" in raw and long_name.encode() in raw  # the names' own bytes
    assert len([p for p in maps.iterdir() if p.suffix == ".png"]) == 8
    if fmt == "png":  # stdout too, in a real process (pytest's capture decodes strictly)
        proc = run_cli("score", model_copy, images_copy, capture_output=True)
        assert proc.returncode == 0 and b"caf\xe9-\xff.png" in proc.stdout, proc.stderr


def test_output_check_refusals_still_name_the_kind(tmp_path, model_copy, images_copy, capsys):
    """The stat-first kind check keeps every old refusal (a checkpoint, an image, a directory)."""
    for target, kind in [(model_copy, "checkpoint"), (sorted(images_copy.glob("*.png"))[0], "image"), (tmp_path, "directory")]:
        with pytest.raises(OutputError, match="already exists and is"):
            check_file_target("--out", target, ("text",))
        assert file_kind(Path(target)) == kind


def test_out_onto_a_score_file_it_wrote_with_a_latin1_name_is_replaced(model_copy, images_copy, tmp_path, capsys):
    """Issue 25: the CSV holds a Latin-1 (not UTF-8) name, and a second `--out` onto it used
    to be refused as "a binary file"; text in any 8-bit encoding is text."""
    shutil.copy(sorted(images_copy.glob("*.png"))[0], images_copy / os.fsdecode(b"caf\xe9.png"))
    out = tmp_path / "s.csv"
    for _ in range(2):
        assert main(["score", str(model_copy), str(images_copy), "--out", str(out)]) == 0
    assert b"caf\xe9.png" in out.read_bytes() and file_kind(out) == "text"
    cut = tmp_path / "cut.txt"  # 4096 bytes that end inside a UTF-8 character
    cut.write_bytes(b"a" * 4095 + "é".encode() + b"rest")
    assert file_kind(cut) == "text"
    for data, kind in [(b"\x00\x01\x02", "binary"), (b"\x7fELF\x02\x01\x01\x00", "binary"), (b"x,y\r\n1,2\n", "text")]:
        (tmp_path / "f").write_bytes(data)
        assert file_kind(tmp_path / "f") == kind, data


@pytest.mark.parametrize("name", ["$x^2$.png", "a_b$.png", "$.png", "\\$x$.png", "$\\frac{1}{0}$.png", "50%_$$.png",
                                  "{}%$^_~\\.png"])
def test_names_a_plotting_library_reads_as_markup_draw_as_themselves(model_copy, images_copy, tmp_path, name, capsys):
    """Issue 25: every legal name renders in every output format, heat-map figures included
    (matplotlib reads `$...$` in titles as mathtext; `a_b$` used to fail)."""
    import matplotlib

    matplotlib.use("Agg")
    shutil.copy(sorted(images_copy.glob("*.png"))[0], images_copy / name)
    out, maps = tmp_path / "s.csv", tmp_path / "maps"
    assert main(["score", str(model_copy), str(images_copy), "--out", str(out), "--maps", str(maps),
                 "--maps-format", "figure"]) == 0, capsys.readouterr().err
    assert (maps / name).is_file() and name in out.read_text()
    title = []
    import matplotlib.figure

    real = matplotlib.figure.Figure.suptitle
    with pytest.MonkeyPatch.context() as m:
        m.setattr(matplotlib.figure.Figure, "suptitle", lambda self, t, **k: title.append(real(self, t, **k)))
        assert main(["score", str(model_copy), str(images_copy / name), "--maps", str(tmp_path / "one"),
                     "--maps-format", "figure", "--out", str(tmp_path / "one.csv")]) == 0
    assert title[0].get_text().startswith(f"{name}: score")  # drawn as the name itself, not as mathtext
    assert not title[0].get_parse_math()
