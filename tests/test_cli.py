import subprocess
import sys

from blockasr.cli import main


def test_version_and_help(capsys):
    import pytest
    with pytest.raises(SystemExit):
        main(["--version"])
    assert "blockasr" in capsys.readouterr().out
    assert main([]) == 0
    assert "prepare" in capsys.readouterr().out


def test_prepare_kaldi_counts_errors(kaldi_dir, tmp_path):
    (kaldi_dir.parent / "audio" / "u1.wav").unlink()
    out = tmp_path / "m.jsonl"
    proc = subprocess.run([sys.executable, "-m", "blockasr", "prepare", "kaldi", str(kaldi_dir),
                           str(out), "--quiet"], capture_output=True, text=True)
    assert proc.returncode == 1
    assert "u1" in proc.stderr and "2 utterances" in proc.stderr and "1 errors" in proc.stderr
    assert len(out.read_text().splitlines()) == 2


def test_prepare_missing_dir_is_one_clear_error(tmp_path, capsys):
    assert main(["prepare", "kaldi", str(tmp_path / "nodir"), str(tmp_path / "m.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "not a Kaldi data dir" in err and "Traceback" not in err


def test_tokenizer_and_cmvn(kaldi_dir, tmp_path, capsys):
    m = tmp_path / "m.jsonl"
    main(["prepare", "kaldi", str(kaldi_dir), str(m), "--quiet"])
    assert main(["tokenizer", "train", "--manifest", str(m), "--vocab-size", "25",
                 "--out", str(tmp_path / "tk")]) == 0
    assert (tmp_path / "tk.model").is_file()
    assert main(["cmvn", "--manifest", str(m), "--out", str(tmp_path / "cmvn.json")]) == 0
    assert (tmp_path / "cmvn.json").is_file()
