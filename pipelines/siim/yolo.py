#!/usr/bin/env python3
"""A stand-in for the SIIM solution's YOLOv5 family, for pipelines/siim.toml.

The real solution runs `python detect.py --weights best.pt ...` from the
ultralytics repository and converts its label files to boxes. Here a
model-free detector (Python's standard library only, so that the pipeline
runs anywhere) plays that part: it finds the bright shapes that `synth`
draws on a darker background as connected components, and writes what a
real family would hand over: COCO results (`image_id`, `category_id`,
`bbox` as x y w h in pixels, `score`) for the images of a COCO file.

    yolo.py IMAGES_DIR COCO_JSON OUT_JSON [--threshold 40] [--min-area 12]

Replace the command in the manifest with your own detector's; anything
that writes this JSON ensembles with podium's detectors through `wbf`.
"""
import argparse
import json
import os
import struct
import zlib


def read_png(path):
    """8-bit grey, RGB or RGBA PNG (not interlaced) → (width, height, rows of RGB)."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise SystemExit(f"{path}: not a PNG file")
    pos, idat, w, h, ctype = 8, b"", 0, 0, 0
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            w, h, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", body)
            if depth != 8 or ctype not in (0, 2, 6) or interlace:
                raise SystemExit(f"{path}: only 8-bit grey, RGB or RGBA PNGs, not interlaced")
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
        pos += 12 + n
    bpp = {0: 1, 2: 3, 6: 4}[ctype]
    raw = zlib.decompress(idat)
    stride = w * bpp
    rows, prev = [], bytearray(stride)
    for y in range(h):
        ft = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if ft == 1:
                line[i] = (line[i] + a) & 255
            elif ft == 2:
                line[i] = (line[i] + b) & 255
            elif ft == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif ft == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append([tuple(line[x * bpp:x * bpp + 3]) if bpp > 1 else (line[x],) * 3 for x in range(w)])
        prev = line
    return w, h, rows


def detect(w, h, rows, threshold, min_area):
    """Boxes of the components brighter than the image's border by `threshold`."""
    border = sorted(sum(rows[y][x]) / 3 for y in range(h) for x in range(w)
                    if x in (0, w - 1) or y in (0, h - 1))
    bg = border[len(border) // 2]
    lum = [[sum(p) / 3 - bg for p in r] for r in rows]
    # A 3×3 mean quiets the background noise.
    smooth = [[sum(lum[j][i] for j in range(max(0, y - 1), min(h, y + 2))
                   for i in range(max(0, x - 1), min(w, x + 2)))
               / ((min(h, y + 2) - max(0, y - 1)) * (min(w, x + 2) - max(0, x - 1)))
               for x in range(w)] for y in range(h)]
    fg = [[smooth[y][x] > threshold for x in range(w)] for y in range(h)]
    seen = [[False] * w for _ in range(h)]
    out = []
    for y0 in range(h):
        for x0 in range(w):
            if not fg[y0][x0] or seen[y0][x0]:
                continue
            stack, pix = [(x0, y0)], []
            seen[y0][x0] = True
            while stack:
                x, y = stack.pop()
                pix.append((x, y))
                for u, v in ((x + 1, y), (x - 1, y), (x, y + 1), (x, y - 1)):
                    if 0 <= u < w and 0 <= v < h and fg[v][u] and not seen[v][u]:
                        seen[v][u] = True
                        stack.append((u, v))
            if len(pix) < min_area:
                continue
            xs, ys = [p[0] for p in pix], [p[1] for p in pix]
            bx, by = min(xs), min(ys)
            bw, bh = max(xs) - bx + 1, max(ys) - by + 1
            contrast = sum(smooth[v][u] for u, v in pix) / len(pix)
            # Confident when bright and compact, less when ragged (merged shapes).
            score = min(1.0, contrast / 160) * min(1.0, 0.4 + len(pix) / (bw * bh))
            out.append(([bx, by, bw, bh], round(score, 4)))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("images")
    ap.add_argument("coco")
    ap.add_argument("out")
    ap.add_argument("--threshold", type=float, default=40)
    ap.add_argument("--min-area", type=int, default=12)
    a = ap.parse_args()
    with open(a.coco) as f:
        coco = json.load(f)
    dets = []
    for im in coco["images"]:
        w, h, rows = read_png(os.path.join(a.images, im["file_name"]))
        for box, score in detect(w, h, rows, a.threshold, a.min_area):
            dets.append({"image_id": im["id"], "category_id": 0, "bbox": box, "score": score})
    with open(a.out, "w") as f:
        json.dump(dets, f)
    print(f"{len(dets)} boxes on {len(coco['images'])} images")


if __name__ == "__main__":
    main()
