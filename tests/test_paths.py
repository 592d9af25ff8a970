"""Writers refuse any resolved output path outside their output folder."""

from __future__ import annotations

import pytest

from lst_data.core.paths import inside


def test_inside_accepts_names_in_the_folder(tmp_path):
    assert inside(tmp_path, "a.flac") == (tmp_path / "a.flac").resolve()
    assert inside(tmp_path / "audio", "k_0123.wav").parent == (tmp_path / "audio").resolve()


@pytest.mark.parametrize("name", ["../x.wav", "x/../../x.wav", "/tmp/x.wav", "a/../../../etc/passwd"])
def test_inside_refuses_escapes(tmp_path, name):
    with pytest.raises(ValueError, match="outside the output folder"):
        inside(tmp_path / "out", name)


def test_inside_refuses_a_symlink_that_leads_out(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "link").symlink_to(tmp_path)
    with pytest.raises(ValueError, match="outside the output folder"):
        inside(tmp_path / "out", "link/x.wav")
