"""The machine line every measured table is stamped with."""

import pytest

from fairseq_kaleidoscope import timing


def test_machine_description_names_cpu_isa_and_kernels() -> None:
    line = timing.machine_description()
    assert line.startswith(timing.cpu_name())
    assert "thread(s)" in line and "kernels " in line
    flags = timing.cpu_isa_flags()
    assert set(flags) <= set(timing.SIMD_FLAGS)
    assert f"ISA {'+'.join(flags) or 'unknown'}" in line


@pytest.mark.skipif(not timing._cpuinfo_field("flags"), reason="no /proc/cpuinfo flags on this OS")
def test_isa_flags_come_from_cpuinfo() -> None:
    flags = timing._cpuinfo_field("flags").split()
    assert timing.cpu_isa_flags() == [f for f in timing.SIMD_FLAGS if f in flags]
    if "avx2" in flags:
        assert "avx2" in timing.machine_description()
