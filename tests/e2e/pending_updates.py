"""NOT COLLECTED (no test_ prefix): scenarios d and c of the device lifecycle.

They continue test_lifecycle.py's VM after scenario b (through its module fixture ``device``):
move them to the end of test_lifecycle.py once they have passed in QEMU. Scenario b first
failed here: a power cut after the commit left grubenv and grubenv.bak on the ESP pointing at
clusters the FAT marked free (``fsck.fat -n``), fixed by fsyncing the renamed file in
``appliance.fsutil.atomic_writer``. After that fix d and c passed once (2026-11-27, these
functions called on the VM disk scenario b left: 2/2 cuts survived, rollback 78 s after
the failed check); not collected yet because they add ~11 min to CI (over the ~20 min
budget) and have run only once.
"""

from __future__ import annotations

import time

import pytest

from tests.e2e.device import grubenv, make_stick, results
from tests.e2e.test_lifecycle import (
    BOOT_S,
    INSTALL_S,
    RUN_S,
    Device,
    model_versions,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(3600)]


CUT_AFTER_S = (0.0, 20.0)  # after the installer started: around the env write, mid slot write


def test_d_power_cuts_during_v3_install_keep_v2(device: Device, figures: dict[str, object]) -> None:
    """Pull the plug while v3 is being installed; the next boot (stick removed) runs v2."""
    device.require("b")
    vm = device.vm
    stick = make_stick(device.builds["3.0.0"].bundle, device.work / "stick-v3.img")
    survived, during = 0, 0
    for delay in CUT_AFTER_S:
        device.boot(stick)
        vm.wait_for(r"edgekiln-usb-update: installing", BOOT_S)
        time.sleep(delay)
        vm.power_cut()
        # a cut that came after the install finished tries v3 first; the end must still be v2
        during += "installed 3.0.0 into slot A" not in vm.console()
        device.boot()
        vm.wait_for(r"health gate: slot B committed", BOOT_S * 2)
        survived += 1
        raw = device.inspect(f"d{survived}")
        env = grubenv(raw)
        assert env.get("ek_committed") == "B", env
    figures["d_power_cuts_survived"] = f"{survived}/{len(CUT_AFTER_S)}"
    figures["d_cuts_during_install"] = during
    device.passed.append("d")


def test_c_broken_v3_rolls_back_to_v2(device: Device, figures: dict[str, object]) -> None:
    device.require("b")
    vm = device.vm
    v3 = device.builds["3.0.0"]
    stick = make_stick(v3.bundle, device.work / "stick-v3.img")
    device.boot(stick)
    vm.wait_for(r"installed 3\.0\.0 into slot A", INSTALL_S)
    failed = vm.wait_for(r"health gate: slot A failed", BOOT_S * 2)
    failed_at = time.time()
    vm.wait_for(r"health gate: slot B committed", BOOT_S * 2, since=failed.end())
    figures["c_failed_check_to_old_slot_s"] = round(time.time() - failed_at, 1)
    vm.wait_for(r"already installed from USB: skipped", BOOT_S, since=failed.end())
    time.sleep(RUN_S)
    raw = device.inspect("c")
    env = grubenv(raw)
    assert env.get("ek_committed") == "B", env
    assert "A" in env.get("ek_bad", ""), env
    assert model_versions(results(raw, device.work))[-1] == "2.0.0"
    device.passed.append("c")
