"""The patch session restores host state exactly, newest change first, whatever fails."""

import pytest

from scripts.animatediff_webui.patch_session import PatchSession


class Host:
    def __init__(self):
        self.values = {"a": 1, "b": 2}
        self.log = []


def set_value(host, key, value):
    def apply():
        old = host.values[key]
        host.values[key] = value
        host.log.append(f"set {key}")
        return old

    def undo(old):
        host.values[key] = old
        host.log.append(f"undo {key}")

    return apply, undo


def test_close_undoes_in_reverse_order():
    host = Host()
    session = PatchSession()
    session.step("a", *set_value(host, "a", 10))
    session.step("b", *set_value(host, "b", 20))
    assert host.values == {"a": 10, "b": 20}
    assert session.step_names == ["a", "b"]
    session.close()
    assert host.values == {"a": 1, "b": 2}
    assert host.log == ["set a", "set b", "undo b", "undo a"]


def test_failing_apply_registers_nothing_and_close_restores_the_rest():
    host = Host()
    session = PatchSession()
    session.step("a", *set_value(host, "a", 10))

    def broken():
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        session.step("broken", broken, lambda: host.log.append("must not run"))
    session.close()
    assert host.values == {"a": 1, "b": 2}
    assert "must not run" not in host.log


def test_close_is_idempotent_and_refuses_new_steps():
    host = Host()
    session = PatchSession()
    session.step("a", *set_value(host, "a", 10))
    session.close()
    session.close()
    assert host.log == ["set a", "undo a"]
    with pytest.raises(RuntimeError, match="already closed"):
        session.step("b", *set_value(host, "b", 3))


def test_failing_undo_does_not_stop_the_others_and_is_reraised():
    host = Host()
    session = PatchSession()
    session.step("a", *set_value(host, "a", 10))

    def bad_undo():
        raise OSError("cannot undo")

    session.step("b", lambda: None, bad_undo)
    session.step("c", *set_value(host, "b", 30))
    with pytest.raises(OSError, match="cannot undo"):
        session.close()
    assert host.values == {"a": 1, "b": 2}
    assert session.closed


def test_context_manager_closes_on_exception_including_base_exceptions():
    host = Host()

    class Interrupted(BaseException):
        pass

    with pytest.raises(Interrupted):
        with PatchSession() as session:
            session.step("a", *set_value(host, "a", 10))
            raise Interrupted()
    assert host.values["a"] == 1


def test_push_registers_an_undo_for_a_change_already_made():
    host = Host()
    session = PatchSession()
    host.values["a"] = 5
    session.push("a", lambda: host.values.__setitem__("a", 1))
    session.close()
    assert host.values["a"] == 1
