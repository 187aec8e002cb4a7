"""Shared fixtures: a real SeaweedFS S3 server on 127.0.0.1, stores on both backends, generated COCO data."""

from __future__ import annotations

import importlib.util
import os
import uuid

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from pathlib import Path

import pytest

# The suite runs on its own settings, never on a developer's: no AWS key, profile, endpoint or ~/.aws file, no
# MLLIB_STORE and no Cityscapes login of theirs reaches a test or a script a test starts (network tests talk to
# 127.0.0.1 only, whatever the shell exports). MLLIB_SHARED_DATA, which only says where the sample data is, stays.
for _k in [k for k in os.environ if k.startswith(("AWS_", "CITYSCAPES_"))
           or (k.startswith("MLLIB_") and k != "MLLIB_SHARED_DATA")]:
    del os.environ[_k]
os.environ["AWS_CONFIG_FILE"] = os.environ["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull

from mllib import store as mstore  # noqa: E402 - after the clean-up above (mllib reads MLLIB_* at import)
from mllib.testing.seaweed import SeaweedS3  # noqa: E402

# The core install (requirements-core.txt: neither PyTorch nor TensorFlow) runs the tests that need neither; these
# modules need PyTorch (the PyTorch datasets, training, evaluation) and are left out where it is absent.
NEEDS_TORCH = ["test_cocodataset.py", "test_datasets.py", "test_evaluate.py", "test_house.py", "test_pipeline.py",
               "test_resume.py", "test_slots.py", "test_sources.py", "test_training.py"]
collect_ignore = [] if importlib.util.find_spec("torch") else NEEDS_TORCH
# ... and these tests of modules the core runs (a parametrized test: those of its cases that name the script)
NEEDS = {
    "torch": {"test_torch_records_split_across_workers", "test_a_flipped_bit_names_the_shard_and_the_record_offset",
              "test_a_full_checkpoint_target_keeps_the_previous_checkpoint",
              "test_conversion_and_reading_under_injected_503s_and_resets",
              "test_fuzz_200_corruptions_each_gets_the_error_or_a_counted_skip", "test_network2d_on_a_corrupted_shard",
              "test_truncated_shard_wrong_length_and_replaced_shard", "test_cocodataset_arguments_are_checked",
              "test_cocostore_out_that_is_a_file", "test_network2d_flags_are_trainconfigs_fields",
              "test_network2d_settings_out_of_range_are_one_line", "test_recordsdataset_arguments_are_checked",
              "test_trainconfig_checks_what_a_library_caller_gives", "test_decompression_bomb_is_a_bad_sample",
              "test_cocodataset_fetches_the_next_batch_while_computing_this_one",
              "test_read_ahead_batches_are_batchsamplers_and_name_each_workers_next_batch",
              "test_tensorflow_then_torch_optimizer_in_one_process", "test_training_stops_with_a_checkpoint_when_the_"
              "store_stays_away_and_resumes_exactly", "test_seaweedfs_with_full_volumes_loses_nothing",
              "test_eight_loader_workers_and_a_conversion_at_once", "test_reading_records_rides_through_a_store_restart",
              "[network2d", "[cocostore"},
    "tensorflow": {"test_records_parse_with_tf_and_labels_equal_renderer",
                   "test_tensorflow_then_torch_optimizer_in_one_process", "[test.py", "[train.py"},
}


def pytest_collection_modifyitems(config, items):
    missing = [m for m in NEEDS if importlib.util.find_spec(m) is None]
    for item in items:
        for m in missing:
            if item.originalname in NEEDS[m] or any(n.startswith("[") and n in item.name for n in NEEDS[m]):
                item.add_marker(pytest.mark.skip(reason=f"needs {m}, which the core install leaves out"))
SHARED = Path(os.environ.get("MLLIB_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """One SeaweedFS server for the whole run; its credentials are set in the environment for boto3."""
    server = SeaweedS3(tmp_path_factory.mktemp("seaweed")).start()
    try:
        with server.environment():
            yield server
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_server):
    name = "t-" + uuid.uuid4().hex[:12]
    s3_server.create_bucket(name)
    return name


@pytest.fixture
def s3_store(s3_bucket):
    return mstore.connect(f"s3://{s3_bucket}")


@pytest.fixture
def local_store(tmp_path):
    return mstore.connect(tmp_path / "store")


@pytest.fixture(params=["local", "s3"])
def any_store(request, tmp_path):
    """The same test against both backends."""
    if request.param == "local":
        return mstore.connect(tmp_path / "store")
    return request.getfixturevalue("s3_store")


ROOT = Path(__file__).resolve().parents[1]


def load_script(rel: str):
    """A script of the project (datasets/getcoco.py ...) as a module, to call its main([...]) in-process."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(rel.replace("/", "_")[:-3], ROOT / rel)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def shared_path(*parts: str) -> Path:
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"shared sample data not present: {p}")
    return p


def put_real_val2017(store) -> Path:
    """The real COCO val2017 sample into datasets/coco/ (skips the test when the shared data is absent)."""
    real = shared_path("coco-real")
    for p in (real / "val2017").glob("*.jpg"):
        store.put_file(f"datasets/coco/val2017/{p.name}", p)
    store.put_file("datasets/coco/annotations/instances_val2017.json", real / "annotations" / "instances_val2017.json")
    return real
