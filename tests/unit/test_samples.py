"""The sample data generator: deterministic, valid, and shaped like a small clinical PACS."""

from __future__ import annotations

import re
from pathlib import Path

from pydicom import dcmread

from gateway.demo.samples import generate_sample_studies, iter_ct_volume, iter_sample_datasets, write_sample_files

UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def test_same_arguments_same_studies() -> None:
    assert generate_sample_studies(48) == generate_sample_studies(48)
    assert generate_sample_studies(48, seed=1) != generate_sample_studies(48)


def test_modality_mix_and_valid_uids() -> None:
    studies = generate_sample_studies(48)
    combinations = {s.modalities for s in studies}
    assert {("CT", "PT"), ("MR", "SR"), ("CT",), ("PT",), ("KO",)} <= combinations
    assert any(not s.patient_name.isascii() for s in studies)
    assert any(not s.study_date for s in studies)
    uids = [s.study_uid for s in studies] + [se.series_uid for s in studies for se in s.series]
    assert len(set(uids)) == len(uids)
    assert all(UID.match(uid) and len(uid) <= 64 for uid in uids)


def test_datasets_match_their_study_and_round_trip(tmp_path: Path) -> None:
    studies = generate_sample_studies(6)
    paths = write_sample_files(tmp_path, studies)
    assert len(paths) == sum(s.instance_count for s in studies)
    by_uid = {s.study_uid: s for s in studies}
    for path in paths:
        ds = dcmread(path)
        study = by_uid[ds.StudyInstanceUID]
        assert ds.PatientName == study.patient_name
        assert ds.Modality in study.modalities
    first = next(iter_sample_datasets(studies))
    assert first.file_meta.MediaStorageSOPInstanceUID == first.SOPInstanceUID


def test_ct_volume_is_made_lazily() -> None:
    slices = iter_ct_volume(slices=3, rows=64, columns=64)
    first = next(slices)
    assert (first.Rows, first.Columns, len(first.PixelData)) == (64, 64, 64 * 64 * 2)
    assert len(list(slices)) == 2
