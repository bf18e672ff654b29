"""`python -m bench.hsm_rate DATA KEY_LABEL [SECONDS]`: prints the raw signatures per
second of one key on the dev token in DATA (one process, one session, random 64-byte data)."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import yaml

from core.hsm.session import HsmSession, mechanism_for


def main() -> None:
    data, label = Path(sys.argv[1]), sys.argv[2]
    seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 2.0
    config = yaml.safe_load((data / "signer.yaml").read_text())
    os.environ["SOFTHSM2_CONF"] = str(data / config["hsm"]["softhsm_conf"])
    pin = (data / config["hsm"]["pin_file"]).read_text().strip()
    with HsmSession(config["hsm"]["module"], config["hsm"]["token_label"], pin) as session:
        mechanism = mechanism_for(session.key_info(label), "sha256")
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            session.sign(label, mechanism, os.urandom(64))
            count += 1
        print(count / (time.perf_counter() - started))


if __name__ == "__main__":
    main()
