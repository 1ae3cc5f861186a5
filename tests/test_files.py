import pytest

from kefu.files import replaced_atomically, replaced_folder, write_text_atomically


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "state.json"
    write_text_atomically(target, "old")
    with pytest.raises(RuntimeError), replaced_atomically(target) as temporary:
        temporary.write_text("half")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]
    write_text_atomically(target, "new")
    assert target.read_text() == "new" and oct(target.stat().st_mode & 0o777) == "0o644"


def test_a_folder_is_replaced_whole_or_not_at_all(tmp_path):
    target = tmp_path / "data"
    with replaced_folder(target) as staging:
        (staging / "a.txt").write_text("first")
    with pytest.raises(RuntimeError), replaced_folder(target) as staging:
        (staging / "a.txt").write_text("half")
        raise RuntimeError("crash mid-write")
    assert (target / "a.txt").read_text() == "first"
    with replaced_folder(target) as staging:
        (staging / "b.txt").write_text("second")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
