"""The wire's pieces that need no server: content codings (bounded inflating, Accept-Encoding),
the system shared memory registry on real POSIX segments, request ids, and integer tensors
refused the same way on the KServe and TF-Serving routes."""

from __future__ import annotations

import gzip
import os
import zlib
from multiprocessing import shared_memory

import numpy as np
import pytest

pytest.importorskip("starlette")
from corepipe import InputError
from corepipe.artifact.plan import TensorSpec
from corepipe.serve.classification import top_k
from corepipe.serve.codec import ShmRef, encode_response, parse_request, serialize_bytes
from corepipe.serve.compression import compress, decompress, response_encoding
from corepipe.serve.model import Rejected
from corepipe.serve.shm import SystemSharedMemory, check_room, read_inputs, write_outputs
from corepipe.serve.tfserving import parse_predict

BODY = b'{"inputs": []}' * 100


@pytest.mark.parametrize("coding,packed", [
    ("gzip", gzip.compress(BODY)),
    ("x-gzip", gzip.compress(BODY)),
    ("deflate", zlib.compress(BODY)),  # zlib-wrapped: what tritonclient and RFC 9110 call deflate
    ("deflate", zlib.compress(BODY)[2:-4]),  # a raw deflate stream, as some clients send
    ("gzip", gzip.compress(BODY[:700]) + gzip.compress(BODY[700:])),  # two gzip members
    ("identity", BODY),
    (None, BODY),
])
def test_request_bodies_are_inflated(coding, packed):
    assert decompress(packed, coding, limit=len(BODY)) == BODY


def test_a_zip_bomb_is_refused_at_the_limit_without_inflating_it_all():
    bomb = gzip.compress(b"\0" * (64 * 2**20))  # 64 MiB of zeros in ~64 KiB
    assert len(bomb) < 2**17
    with pytest.raises(Rejected) as info:
        decompress(bomb, "gzip", limit=2**20)
    assert info.value.status == 413 and "inflates past this model's limit of 1048576 bytes" in str(info.value)
    assert decompress(gzip.compress(b"x" * 2**20), "gzip", limit=2**20) == b"x" * 2**20  # exactly the limit


@pytest.mark.parametrize("coding,packed,status,message", [
    ("br", BODY, 415, "Content-Encoding 'br' is not supported"),
    ("gzip, gzip", BODY, 415, "not supported"),
    ("gzip", BODY, 400, "not valid gzip data"),
    ("gzip", gzip.compress(BODY)[:-20], 400, "ends before its compressed stream"),
])
def test_bad_codings_say_what_is_wrong(coding, packed, status, message):
    with pytest.raises(Rejected, match=message) as info:
        decompress(packed, coding, limit=10**6)
    assert info.value.status == status


@pytest.mark.parametrize("header,coding", [
    (None, None), ("", None), ("identity", None), ("br", None),
    ("gzip", "gzip"), ("deflate", "deflate"), ("gzip, deflate", "gzip"), ("deflate, gzip", "deflate"),
    ("gzip;q=0.5, deflate", "deflate"), ("gzip;q=0", None), ("*", "gzip"), ("br, *;q=0.1", "gzip"),
])
def test_accept_encoding_picks_the_coding(header, coding):
    assert response_encoding(header) == coding


def test_compressed_responses_inflate_back():
    data = os.urandom(1000) + b"\0" * 100_000
    assert gzip.decompress(compress(data, "gzip")) == data
    assert zlib.decompress(compress(data, "deflate")) == data  # tritonclient inflates deflate this way
    assert len(compress(data, "gzip")) < len(data) // 10


def test_request_ids_are_echoed_as_given():
    for given, text in (("42", b'"id":"42"'), (42, b'"id":42'), (4.5, b'"id":4.5'), (2**70, b'"id":1180591620717411303424')):
        req = parse_request(('{"id": %s, "inputs": []}' % (f'"{given}"' if isinstance(given, str) else given)).encode(), None)
        assert req.id == given and type(req.id) is type(given)
        body, _ = encode_response("m", "1", req, {}, [])
        assert text in body, body
    assert b'"id"' not in encode_response("m", "1", parse_request(b'{"inputs": []}', None), {}, [])[0]


def test_fractional_values_for_integer_inputs_are_refused_alike_on_both_routes():
    ids = TensorSpec("ids", "int32", (1, 3))
    kserve = b'{"inputs": [{"name": "ids", "shape": [1, 3], "datatype": "INT32", "data": [1, 2.5, 3]}]}'
    with pytest.raises(InputError) as a:
        parse_request(kserve, None)
    with pytest.raises(InputError) as b:
        parse_predict(b'{"inputs": {"ids": [[1, 2.5, 3]]}}', [ids])
    assert str(a.value) == str(b.value)
    assert "input 'ids': INT32 values must be whole numbers" in str(a.value) and "2.5 at flat position 1" in str(a.value)
    for data, bad in (("[1, 3e9, 3]", "3000000000.0"), ("[1, 5000000000, 3]", "5000000000"), ("[1, NaN, 3]", "nan")):
        with pytest.raises(InputError, match=f"got {bad}"):
            parse_request(kserve.replace(b"[1, 2.5, 3]", data.encode()), None)
    whole = parse_request(kserve.replace(b"2.5", b"2.0"), None).feeds["ids"]
    assert whole.dtype == np.int32 and whole.tolist() == [[1, 2, 3]]


# -- system shared memory --------------------------------------------------------------------
@pytest.fixture
def segment():
    seg = shared_memory.SharedMemory(create=True, size=4096)
    yield seg
    seg.close()
    seg.unlink()


def test_registered_regions_are_read_and_written_by_value(segment):
    reg = SystemSharedMemory()
    key = "/" + segment.name
    reg.register("in", key, 0, 1024)
    reg.register("out", key, 3000, 1000)  # past a page boundary: mapped from the page it is in
    assert reg.status() == [{"name": "in", "key": key, "offset": 0, "byte_size": 1024},
                            {"name": "out", "key": key, "offset": 3000, "byte_size": 1000}]
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    segment.buf[16:16 + 48] = x.tobytes()
    ref = ShmRef("in", 16, 48, "FP32", (3, 4))
    with reg.lease(["in", "out"]) as regions:
        feeds = read_inputs(regions, {"x": ref})
        np.testing.assert_array_equal(feeds["x"], x)
        write_outputs(regions, {"y": ShmRef("out", 8)}, {"y": x * 2})
        segment.buf[16:20] = np.float32(9).tobytes()  # the client reuses its region at once
        assert feeds["x"][0, 0] == 0 and feeds["x"].flags.aligned  # the request holds a copy
    got = np.frombuffer(bytes(segment.buf[3008:3056]), np.float32).reshape(3, 4)
    np.testing.assert_array_equal(got, x * 2)
    reg.close()
    assert reg.status() == []


def test_regions_are_bounds_checked(segment):
    reg = SystemSharedMemory(max_regions=2)
    key = segment.name
    with pytest.raises(Rejected, match="runs past the end of segment"):
        reg.register("big", key, 4000, 200)
    reg.register("r", key, 0, 64)
    with pytest.raises(Rejected, match="already registered"):
        reg.register("r", key, 0, 64)
    with reg.lease(["r"]) as regions:
        with pytest.raises(Rejected, match=r"offset 60 \+ shared_memory_byte_size 8 runs past the end of region 'r'"):
            read_inputs(regions, {"x": ShmRef("r", 60, 8, "FP32", (2,))})
        with pytest.raises(Rejected, match="FP32 \\[2\\] needs 8 bytes, but shared_memory_byte_size is 12"):
            read_inputs(regions, {"x": ShmRef("r", 0, 12, "FP32", (2,))})
        with pytest.raises(Rejected, match="needs 4000000000000 bytes but region 'r' gives it 64"):  # before allocating
            read_inputs(regions, {"x": ShmRef("r", 0, None, "FP32", (10**12,))})
        with pytest.raises(Rejected, match="output 'y': needs 400 bytes but region 'r' gives it 64"):
            check_room(regions, {"y": ShmRef("r")}, [TensorSpec("y", "float32", (1, 100))])
    with pytest.raises(Rejected, match="region 'nope' is not registered") as info, reg.lease(["r", "nope"]):
        pass
    assert info.value.status == 400
    reg.register("r2", key, 0, 8)
    with pytest.raises(Rejected, match="at most 2"):
        reg.register("r3", key, 0, 8)
    reg.close()


def test_room_for_an_output_over_dynamic_dims_is_the_requests_not_the_maximum(segment):
    """An output whose batch dim runs 1..8 needs 4 rows' bytes for a batch of 4 (perf_analyzer
    ``-b 4 --shared-memory system`` registers exactly that), and 5 rows do not fit there."""
    reg = SystemSharedMemory()
    reg.register("out", segment.name, 0, 4 * 256 * 4)  # 4 rows of float32[256]
    ids = TensorSpec("ids", "int64", (8, 16), dims=("batch", "sequence"), min_shape=(1, 1))
    pooled = TensorSpec("pooled", "float32", (8, 256), dims=("batch", None), min_shape=(1, 256))
    hidden = TensorSpec("hidden", "float32", (8, 16, 256), dims=("batch", "sequence", None), min_shape=(1, 1, 256))
    with reg.lease(["out"]) as regions:
        check_room(regions, {"pooled": ShmRef("out")}, [pooled], {"ids": np.zeros((4, 16), np.int64)}, [ids])
        with pytest.raises(Rejected, match="output 'pooled': needs 5120 bytes but region 'out' gives it 4096"):
            check_room(regions, {"pooled": ShmRef("out")}, [pooled], {"ids": np.zeros((5, 3), np.int64)}, [ids])
        check_room(regions, {"hidden": ShmRef("out")}, [hidden], {"ids": np.zeros((1, 4), np.int64)}, [ids])
        with pytest.raises(Rejected, match="needs 16384 bytes"):  # 4 x 4 x 256 x 4 bytes > 4096
            check_room(regions, {"hidden": ShmRef("out")}, [hidden], {"ids": np.zeros((4, 4), np.int64)}, [ids])
    reg.close()


@pytest.mark.parametrize("key,message", [
    ("/../etc/passwd", "not a POSIX shared memory name"),
    ("/dev/shm/x", "not a POSIX shared memory name"),
    ("..", "not a POSIX shared memory name"),
    ("/no_such_segment_i18", "cannot open shared memory segment"),
    ("/corepipe_1_abc", "corepipe's own pipeline segments"),
])
def test_only_segments_under_dev_shm_are_registered(key, message):
    with pytest.raises(Rejected, match=message) as info:
        SystemSharedMemory().register("r", key, 0, 8)
    assert info.value.status == 400


def test_symlinks_are_not_followed(segment, tmp_path):
    link = f"/dev/shm/i18wire_link_{os.getpid()}"
    os.symlink(f"/dev/shm/{segment.name}", link)
    try:
        with pytest.raises(Rejected, match="cannot open shared memory segment"):
            SystemSharedMemory().register("r", os.path.basename(link), 0, 8)
    finally:
        os.unlink(link)


def test_a_shrunk_segment_is_an_error_not_a_crash(segment):
    reg = SystemSharedMemory()
    reg.register("r", segment.name, 0, 4096)
    os.truncate(f"/dev/shm/{segment.name}", 1024)  # through a mapping, reading it now would be a SIGBUS
    with reg.lease(["r"]) as regions:
        with pytest.raises(Rejected, match="is now 1024 bytes"):
            read_inputs(regions, {"x": ShmRef("r", 2048, 8, "FP32", (2,))})
        with pytest.raises(Rejected, match="is now 1024 bytes"):
            read_inputs(regions, {"x": ShmRef("r", 1020, 8, "FP32", (2,))})  # half there
        with pytest.raises(Rejected, match="is now 1024 bytes"):
            write_outputs(regions, {"y": ShmRef("r", 2048)}, {"y": np.ones(2, np.float32)})
    assert os.path.getsize(f"/dev/shm/{segment.name}") == 1024  # not grown back
    reg.close()


def test_unregistering_a_region_in_use_unmaps_it_when_the_request_ends(segment):
    reg = SystemSharedMemory()
    reg.register("r", segment.name, 0, 64)
    with reg.lease(["r"]) as regions:
        region = regions["r"]
        reg.unregister("r")
        assert reg.status() == [] and region.retired
        write_outputs(regions, {"y": ShmRef("r")}, {"y": np.ones(4, np.float32)})  # still mapped
    assert region._fd is None  # closed once the request let go
    reg.unregister("never-registered")  # a no-op, as in Triton
    reg.register("r", segment.name, 0, 64)  # the name is free again
    reg.unregister()
    assert reg.status() == []
    with pytest.raises(Rejected, match="no system shared memory region 'r'") as info:
        reg.status("r")
    assert info.value.status == 404


# -- classification ----------------------------------------------------------------------------
def test_classification_gives_the_top_k_per_row_as_triton_writes_them():
    logits = np.array([[0.1, 2.5, -1.0, 0.7], [3.0, 0.0, 0.5, 0.25]], np.float32)
    got = top_k(logits, 3, batched=True)
    assert got.shape == (2, 3) and got.dtype == object
    assert got.tolist() == [[b"2.500000:1", b"0.700000:3", b"0.100000:0"],
                            [b"3.000000:0", b"0.500000:2", b"0.250000:3"]]
    assert top_k(logits, 9, batched=True, labels=["cat", "dog"]).tolist()[0][:2] == [b"2.500000:1:dog", b"0.700000:3"]
    flat = top_k(logits[:1], 2, batched=False)  # no batch dim: the whole tensor, shape [K]
    assert flat.tolist() == [b"2.500000:1", b"0.700000:3"]
    assert top_k(np.array([[4, 9, 1]], np.int64), 1, batched=True).tolist() == [[b"9:1"]]
    with pytest.raises(InputError, match="numeric outputs only"):
        top_k(np.array([True]), 1, batched=False)


def test_classification_answers_encode_as_bytes_tensors():
    req = parse_request(b'{"inputs": [], "outputs": [{"name": "y", "parameters": {"classification": 2}}]}', None)
    assert req.classes == {"y": 2}
    answer = {"y": top_k(np.array([[1.0, 3.0, 2.0]], np.float32), 2, batched=True)}
    body, header = encode_response("m", "1", req, answer, ["y"])
    assert header is None
    assert b'"datatype":"BYTES","shape":[1,2],"data":["3.000000:1","2.000000:2"]' in body
    req.binary_default = True
    body, header = encode_response("m", "1", req, answer, ["y"])
    assert body[header:] == serialize_bytes(answer["y"]) == b"\x0a\0\0\x003.000000:1\x0a\0\0\x002.000000:2"
