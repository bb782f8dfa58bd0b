"""Fake ``PyJEM.TEM3``: DAC lens values 0..65535 (ints only), stage positions in nm and degrees."""

from __future__ import annotations

from PyJEM._state import FAKE


def _dac(value: int) -> int:
    if type(value) is not int or not 0 <= value <= 65535:
        raise ValueError(f"lens value must be an int in 0..65535, got {value!r}")
    return value


class Lens3:
    def GetOLc(self) -> int:
        FAKE.calls.append("GetOLc")
        return FAKE.lens["OLc"]

    def GetOLf(self) -> int:
        FAKE.calls.append("GetOLf")
        return FAKE.lens["OLf"]

    def GetOM(self) -> int:
        FAKE.calls.append("GetOM")
        return FAKE.lens["OM"]

    def SetOLc(self, value: int) -> None:
        FAKE.calls.append("SetOLc")
        FAKE.lens["OLc"] = _dac(value)

    def SetOLf(self, value: int) -> None:
        FAKE.calls.append("SetOLf")
        FAKE.lens["OLf"] = _dac(value)

    def SetOM(self, value: int) -> None:
        FAKE.calls.append("SetOM")
        FAKE.lens["OM"] = _dac(value)


class Stage3:
    def GetPos(self) -> list[float]:
        FAKE.calls.append("GetPos")
        return list(FAKE.pos)

    def GetStatus(self) -> list[int]:
        FAKE.calls.append("GetStatus")
        return list(FAKE.status)

    def _set(self, i: int, value: float, name: str) -> None:
        FAKE.calls.append(name)
        if not isinstance(value, float):
            raise ValueError(f"{name} needs a float")
        if not FAKE.stuck_stage:
            FAKE.pos[i] = value

    def SetX(self, value: float) -> None:
        self._set(0, value, "SetX")

    def SetY(self, value: float) -> None:
        self._set(1, value, "SetY")

    def SetZ(self, value: float) -> None:
        self._set(2, value, "SetZ")

    def SetTiltXAngle(self, value: float) -> None:
        self._set(3, value, "SetTiltXAngle")

    def SetTiltYAngle(self, value: float) -> None:
        self._set(4, value, "SetTiltYAngle")

    def Stop(self) -> None:
        FAKE.calls.append("Stop")


_MODES = {0: "MAG", 1: "MAG2", 2: "LowMAG", 3: "SAMAG", 4: "DIFF"}


class EOS3:
    def GetMagValue(self) -> list:
        FAKE.calls.append("GetMagValue")
        return [FAKE.mag, "X", f"X{FAKE.mag:g}"]

    def GetFunctionMode(self) -> list:
        FAKE.calls.append("GetFunctionMode")
        return [FAKE.function_mode, _MODES[FAKE.function_mode]]

    def SelectFunctionMode(self, mode: int) -> None:
        FAKE.calls.append("SelectFunctionMode")
        if not isinstance(mode, int) or mode not in _MODES:
            raise ValueError(mode)
        FAKE.function_mode = mode


class Def3:
    def GetBeamBlank(self) -> int:
        FAKE.calls.append("GetBeamBlank")
        return FAKE.blank

    def SetBeamBlank(self, sw: int) -> None:
        FAKE.calls.append("SetBeamBlank")
        if sw not in (0, 1):
            raise ValueError(sw)
        FAKE.blank = sw
