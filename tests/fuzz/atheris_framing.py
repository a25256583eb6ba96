"""atheris harness: the reader framing (edge/framing.py) over byte streams cut into reads anywhere.

First byte: protocol (even: em4100, odd: ascii) and how many cuts; then the cut sizes; the rest is the
stream. Checked: nothing raises, ``rest`` stays bounded, faults keep at most RAW_CAP bytes, and for
EM4100 the items do not depend on how the stream was cut.
"""

from __future__ import annotations

import atheris

with atheris.instrument_imports():
    from edge.framing import RAW_CAP, FrameFault, FrameParser, encode_ascii, encode_em4100, parse_ascii, parse_em4100

from tests.fuzz.guard import only_raises
from tests.fuzz.harness import run


def test_one(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    head = fdp.ConsumeInt(1)
    protocol = "em4100" if head % 2 == 0 else "ascii"
    sizes = [fdp.ConsumeIntInRange(0, 64) for _ in range(head % 8)]
    stream = fdp.ConsumeBytes(fdp.remaining_bytes())
    with only_raises("framing"):
        parser = FrameParser(protocol)
        items = []
        pos = 0
        for size in [*sizes, len(stream)]:
            chunk = stream[pos:pos + size]
            pos += len(chunk)
            items += parser.feed(chunk)
            assert len(parser._rest) <= (RAW_CAP if protocol == "em4100" else 32), parser._rest
        for item in items:
            assert not isinstance(item, FrameFault) or len(item.raw) <= RAW_CAP
        whole, rest = parse_em4100(stream) if protocol == "em4100" else parse_ascii(stream)
        if protocol == "em4100":
            assert items == whole and parser._rest == rest, "EM4100 items depend on how the stream was cut"


SEEDS = [
    b"\x00" + encode_em4100("0F00A1B2C3") * 2,
    b"\x02\x05" + b"junk" + encode_em4100("0F00B0B0B0") + b"\x02\x0312",
    b"\x01" + encode_ascii("40011111") + b"P1234\r\n" + b"x" * 40 + b"\n",
    b"\x03\x01\x02" + b"\r\n\r" + encode_ascii("ABC") + b"\x1a\n",
]

if __name__ == "__main__":
    run("framing", test_one, SEEDS)
