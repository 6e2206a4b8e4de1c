"""Pack / unpack a folder of small files into N byte-balanced parts (for carrying EuroSAT's
27,000 jpgs to the lent GPU machine in several calls: each call may carry 64 MiB).

  python .ci/device/pack_folder.py pack ../shared/data/eurosat_rgb .carry/eurosat 2
  python .ci/device/pack_folder.py unpack .carry/eurosat/part0 /tmp/eurosat_rgb
"""
import json
import os
import sys


def pack(src, dst, parts):
    files = sorted(os.path.relpath(os.path.join(d, f), src) for d, _, fs in os.walk(src) for f in fs)
    sizes = [os.path.getsize(os.path.join(src, f)) for f in files]
    total, target = sum(sizes), sum(sizes) / parts
    os.makedirs(dst, exist_ok=True)
    acc, k, chunk = 0, 0, []
    groups = [[] for _ in range(parts)]
    for f, s in zip(files, sizes):
        if acc >= target * (k + 1) and k < parts - 1:
            k += 1
        groups[k].append(f)
        acc += s
    for k, g in enumerate(groups):
        index, off = [], 0
        with open(os.path.join(dst, f"part{k}.bin"), "wb") as out:
            for f in g:
                b = open(os.path.join(src, f), "rb").read()
                out.write(b)
                index.append([f, off, len(b)])
                off += len(b)
        json.dump(index, open(os.path.join(dst, f"part{k}.json"), "w"))
        print(f"part{k}: {len(g)} files, {off / 2**20:.1f} MiB")


def unpack(part, dst):
    index = json.load(open(part + ".json"))
    with open(part + ".bin", "rb") as f:
        data = f.read()
    for name, off, n in index:
        p = os.path.join(dst, name)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as out:
            out.write(data[off:off + n])
    print(f"unpacked {len(index)} files into {dst}")


if __name__ == "__main__":
    if sys.argv[1] == "pack":
        pack(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        unpack(sys.argv[2], sys.argv[3])
