"""Where the gateway's event loop spends its time, from a py-spy recording of a running gateway.

    .venv/bin/python bench/modbus_mqtt_bench.py --devices 100 --registers 125 --interval 0.25 &
    sleep 14; .venv/bin/py-spy record -p "$(pgrep -f 'gateway run /tmp/bench')" -d 20 -r 200 -f raw \
        -o /tmp/profile.txt --nonblocking
    .venv/bin/python bench/profile_summary.py /tmp/profile.txt

Prints the share of the event loop's busy samples (the loop waiting in select() is left out; paho's and the
buffer's threads too) that each function takes itself, and the inclusive share of the stages of the hot path.
py-spy is a development tool: `pip install py-spy`, it is not a dependency of the gateway.
"""

from __future__ import annotations

import collections
import re
import sys

STAGES = ("UnitPoller.read", "DeviceMapper.readings", "Processor.process", "encode_batch", "Pipeline.submit",
          "Buffer.commit", "Buffer.fetch", "Publisher._drain", "Publisher._send")


def busy_samples(path: str) -> tuple[collections.Counter[str], collections.Counter[str], int]:
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    with open(path, encoding="utf-8") as recording:
        for line in recording:
            stack, _, count = line.rstrip().rpartition(" ")
            frames = [re.sub(r":\d+\)$", ")", frame) for frame in stack.split(";")]
            if frames[0].startswith("Thread._bootstrap") or frames[-1].startswith("EpollSelector.select"):
                continue  # another thread, or the loop waiting
            samples = int(count)
            total += samples
            own[frames[-1]] += samples
            for frame in set(frames):
                inclusive[frame] += samples
    return own, inclusive, total


def main() -> None:
    for path in sys.argv[1:]:
        own, inclusive, total = busy_samples(path)
        print(f"{path}: {total} busy samples on the event loop")
        print("  self:")
        for name, samples in own.most_common(12):
            print(f"    {100 * samples / total:5.1f} %  {name}")
        print("  inclusive, the stages:")
        for name, samples in inclusive.most_common():
            if name.startswith(STAGES):
                print(f"    {100 * samples / total:5.1f} %  {name}")


if __name__ == "__main__":
    main()
