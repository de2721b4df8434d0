"""Run with the MXNet 1.9.1 side interpreter: write spec'd records with mx.recordio, read ours.

Usage: python recordio_roundtrip.py WORKDIR
WORKDIR holds spec.json, images.npz and, per file name N in the spec, the project's
project_N.rec/.idx and project_N_seq.rec. Writes mx_N.rec/.idx and mx_read.json / mx_imgs.npz
(what mxnet reads back from the project's files, and its decode of its own image records).
"""
import json
import sys

import mxnet as mx
import numpy as np


def build(record, images):
    """The record bytes, made by mxnet's own pack / pack_img (or raw bytes)."""
    if record["kind"] == "raw":
        return bytes.fromhex(record["payload_hex"])
    header = mx.recordio.IRHeader(record["flag"], record["label"], record["id"], record["id2"])
    if record["kind"] == "pack":
        return mx.recordio.pack(header, bytes.fromhex(record["payload_hex"]))
    return mx.recordio.pack_img(header, images[record["img"]], quality=record["quality"],
                                img_fmt=record["fmt"])


def header_json(header):
    label = header.label.tolist() if isinstance(header.label, np.ndarray) else header.label
    return [header.flag, label, header.id, header.id2]


def main(work):
    spec = json.load(open(f"{work}/spec.json"))
    images = np.load(f"{work}/images.npz")
    report, decoded = {}, {}
    for name, records in spec.items():
        writer = mx.recordio.MXIndexedRecordIO(f"{work}/mx_{name}.idx", f"{work}/mx_{name}.rec", "w")
        tells = []
        for record in records:
            writer.write_idx(record["key"], build(record, images))
            tells.append(writer.tell())
        writer.close()
        own = mx.recordio.MXIndexedRecordIO(f"{work}/mx_{name}.idx", f"{work}/mx_{name}.rec", "r")
        for record in records:
            if record["kind"] == "img":
                decoded[f"own_{name}_{record['key']}"] = mx.recordio.unpack_img(own.read_idx(record["key"]))[1]
        own.close()

        reader = mx.recordio.MXIndexedRecordIO(f"{work}/project_{name}.idx",
                                               f"{work}/project_{name}.rec", "r")
        by_key = {}
        for record in records:
            buf = reader.read_idx(record["key"])
            entry = {"hex": buf.hex()}
            if record["kind"] != "raw":
                header, payload = mx.recordio.unpack(buf)
                entry.update(header=header_json(header), payload_hex=payload.hex())
            if record["kind"] == "img":
                header, img = mx.recordio.unpack_img(buf)
                decoded[f"{name}_{record['key']}"] = img
            by_key[str(record["key"])] = entry
        reader.close()

        seq_reader = mx.recordio.MXRecordIO(f"{work}/project_{name}_seq.rec", "r")
        sequential = []
        while True:
            buf = seq_reader.read()
            if buf is None:
                break
            sequential.append(buf.hex())
        seq_reader.close()
        report[name] = {"tells": tells, "by_key": by_key, "sequential": sequential}
    json.dump(report, open(f"{work}/mx_read.json", "w"))
    np.savez(f"{work}/mx_imgs.npz", **decoded)


if __name__ == "__main__":
    main(sys.argv[1])
