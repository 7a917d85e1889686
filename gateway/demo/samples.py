"""Deterministic synthetic studies: the demo's content, the tests' ground truth, the benchmarks' load.

The mix is shaped like a small clinical PACS: single-modality studies and the combinations that
matter for ModalitiesInStudy (PET/CT, MR with a structured report, CT with report and key
images), patients with several studies, a few names outside ASCII, a couple of undated studies.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian

__all__ = [
    "SOP_CLASSES",
    "SampleSeries",
    "SampleStudy",
    "generate_sample_studies",
    "iter_ct_volume",
    "iter_sample_datasets",
    "write_sample_files",
]

_ROOT = "1.2.826.0.1.3680043.10.1234"

SOP_CLASSES = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",
    "MR": "1.2.840.10008.5.1.4.1.1.4",
    "PT": "1.2.840.10008.5.1.4.1.1.128",
    "US": "1.2.840.10008.5.1.4.1.1.6.1",
    "SR": "1.2.840.10008.5.1.4.1.1.88.11",
    "KO": "1.2.840.10008.5.1.4.1.1.88.59",
}

# Modalities of each study kind, and how often it occurs.
_STUDY_KINDS: list[tuple[tuple[str, ...], int]] = [
    (("CT",), 8),
    (("MR",), 7),
    (("PT",), 3),
    (("US",), 4),
    (("SR",), 2),
    (("KO",), 2),
    (("CT", "PT"), 8),
    (("MR", "SR"), 6),
    (("CT", "SR", "KO"), 4),
    (("CT", "MR"), 4),
]

_PATIENTS = [
    ("Doe^John", "M", "19600412"),
    ("Doe^Jane", "F", "19650301"),
    ("Müller^Anna", "F", "19720815"),
    ("O'Brien^Sean", "M", "19550101"),
    ("Smith^Robert^J", "M", "19800220"),
    ("García^José", "M", "19901111"),
    ("Nguyen^Thi", "F", "19851203"),
    ("Dupont^Élise", "F", "19770707"),
    ("Kowalski^Jan", "M", "19490930"),
    ("Tanaka^Yuki", "F", "20010518"),
    ("Brown^Alice", "F", "19930228"),
    ("doe^jim", "M", "19700101"),
    ("Ødegaard^Lars", "M", "19680606"),
    ("Rossi^Maria", "F", "19820412"),
    ("Schmidt^Hans", "M", "19581225"),
    ("Lee^Min", "O", "19990909"),
]

_DESCRIPTIONS = {
    "CT": "CT CHEST W CONTRAST",
    "MR": "MR BRAIN WO CONTRAST",
    "PT": "PET WHOLE BODY FDG",
    "US": "US ABDOMEN COMPLETE",
    "SR": "RADIOLOGY REPORT",
    "KO": "KEY IMAGES",
}


@dataclass(frozen=True)
class SampleSeries:
    """One series of a sample study."""

    series_uid: str
    modality: str
    sop_class_uid: str
    instance_count: int
    series_number: int
    description: str

    def instance_uid(self, number: int) -> str:
        """The SOPInstanceUID of instance `number` (1-based)."""
        return f"{self.series_uid}.{number}"


@dataclass(frozen=True)
class SampleStudy:
    """One sample study and everything the ground truth needs about it."""

    study_uid: str
    patient_id: str
    patient_name: str
    patient_birth_date: str
    patient_sex: str
    study_date: str
    study_time: str
    accession_number: str
    study_id: str
    description: str
    referring_physician: str
    series: tuple[SampleSeries, ...]

    @property
    def modalities(self) -> tuple[str, ...]:
        """The distinct series modalities, sorted: the true ModalitiesInStudy."""
        return tuple(sorted({s.modality for s in self.series}))

    @property
    def instance_count(self) -> int:
        """The true NumberOfStudyRelatedInstances."""
        return sum(s.instance_count for s in self.series)


def generate_sample_studies(count: int = 48, seed: int = 0) -> list[SampleStudy]:
    """`count` studies, the same for the same arguments."""
    rng = random.Random(seed)
    kinds = [kind for kind, weight in _STUDY_KINDS for _ in range(weight)]
    studies = []
    for index in range(count):
        modalities = kinds[index % len(kinds)] if index < len(kinds) else rng.choice(kinds)
        patient = index % len(_PATIENTS) if index < len(_PATIENTS) else rng.randrange(len(_PATIENTS))
        name, sex, birth = _PATIENTS[patient]
        study_uid = f"{_ROOT}.{seed + 1}.{index + 1}"
        series = []
        for number, modality in enumerate(_series_modalities(modalities, rng), start=1):
            instances = 1 if modality in ("SR", "KO") else rng.randint(1, 5)
            series.append(
                SampleSeries(
                    series_uid=f"{study_uid}.{number}",
                    modality=modality,
                    sop_class_uid=SOP_CLASSES[modality],
                    instance_count=instances,
                    series_number=number,
                    description=f"{_DESCRIPTIONS[modality]} {number}",
                )
            )
        undated = index % 23 == 22
        studies.append(
            SampleStudy(
                study_uid=study_uid,
                patient_id=f"PAT{patient + 1:04d}",
                patient_name=name,
                patient_birth_date=birth,
                patient_sex=sex,
                study_date=""
                if undated
                else f"{2018 + rng.randrange(7)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}",
                study_time=f"{rng.randint(7, 19):02d}{rng.randrange(60):02d}{rng.randrange(60):02d}",
                accession_number=f"ACC{seed:02d}{index + 1:05d}",
                study_id=str(index + 1),
                description=" + ".join(_DESCRIPTIONS[m] for m in modalities),
                referring_physician=rng.choice(["House^Gregory", "Grey^Meredith", "Watson^John", ""]),
                series=tuple(series),
            )
        )
    return studies


def _series_modalities(modalities: tuple[str, ...], rng: random.Random) -> list[str]:
    result = []
    for modality in modalities:
        repeats = rng.randint(1, 2) if modality in ("CT", "MR") else 1
        result += [modality] * repeats
    return result


def _file_meta(sop_class_uid: str, sop_instance_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return meta


def _add_image(ds: Dataset, modality: str, rows: int, columns: int, rng: np.random.Generator) -> None:
    ds.Rows = rows
    ds.Columns = columns
    ds.SamplesPerPixel = 3 if modality == "US" else 1
    if modality == "US":
        ds.PhotometricInterpretation = "RGB"
        ds.PlanarConfiguration = 0
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit = 7
        ds.PixelRepresentation = 0
        ds.PixelData = rng.integers(0, 256, (rows, columns, 3), dtype=np.uint8).tobytes()
        return
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = -1024 if modality == "CT" else 0
    ds.RescaleSlope = 1
    ds.WindowCenter = 40 if modality == "CT" else 600
    ds.WindowWidth = 400 if modality == "CT" else 1200
    yy, xx = np.mgrid[0:rows, 0:columns]
    disc = ((yy - rows / 2) ** 2 + (xx - columns / 2) ** 2) < (min(rows, columns) / 3) ** 2
    pixels = np.where(disc, 1100, 24) + rng.integers(0, 40, (rows, columns))
    ds.PixelData = pixels.astype(np.uint16).tobytes()


def _add_document(ds: Dataset, modality: str) -> None:
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    concept = Dataset()
    concept.CodeValue = "113000" if modality == "KO" else "18748-4"
    concept.CodingSchemeDesignator = "DCM" if modality == "KO" else "LN"
    concept.CodeMeaning = "Of Interest" if modality == "KO" else "Diagnostic imaging report"
    ds.ConceptNameCodeSequence = [concept]
    ds.ContentSequence = []


def _instance(study: SampleStudy, series: SampleSeries, number: int, rng: np.random.Generator) -> Dataset:
    ds = Dataset()
    ds.file_meta = _file_meta(series.sop_class_uid, series.instance_uid(number))
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = series.sop_class_uid
    ds.SOPInstanceUID = series.instance_uid(number)
    ds.StudyDate = study.study_date
    ds.StudyTime = study.study_time
    ds.ContentDate = study.study_date
    ds.ContentTime = study.study_time
    ds.AccessionNumber = study.accession_number
    ds.Modality = series.modality
    ds.Manufacturer = "dicomweb-gateway samples"
    ds.ReferringPhysicianName = study.referring_physician
    ds.StudyDescription = study.description
    ds.SeriesDescription = series.description
    ds.PatientName = study.patient_name
    ds.PatientID = study.patient_id
    ds.PatientBirthDate = study.patient_birth_date
    ds.PatientSex = study.patient_sex
    ds.StudyInstanceUID = study.study_uid
    ds.SeriesInstanceUID = series.series_uid
    ds.StudyID = study.study_id
    ds.SeriesNumber = series.series_number
    ds.InstanceNumber = number
    if series.modality in ("SR", "KO"):
        _add_document(ds, series.modality)
    else:
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.FrameOfReferenceUID = f"{study.study_uid}.0"
        _add_image(ds, series.modality, 32, 32, rng)
    return ds


def iter_sample_datasets(studies: Iterable[SampleStudy]) -> Iterator[Dataset]:
    """Yield every instance of `studies` as a complete dataset, ready for C-STORE or a file."""
    for study in studies:
        rng = np.random.default_rng(zlib.crc32(study.study_uid.encode()))
        for series in study.series:
            for number in range(1, series.instance_count + 1):
                yield _instance(study, series, number, rng)


def write_sample_files(directory: Path, studies: Iterable[SampleStudy]) -> list[Path]:
    """Write every instance as a Part 10 file in `directory`; returns the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in iter_sample_datasets(studies):
        path = directory / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def iter_ct_volume(slices: int = 300, rows: int = 512, columns: int = 512, seed: int = 0) -> Iterator[Dataset]:
    """One CT study of `slices` 16-bit slices, made one at a time (for benchmarks)."""
    series = SampleSeries(f"{_ROOT}.9{seed}.1.1", "CT", SOP_CLASSES["CT"], slices, 1, "CT VOLUME")
    study = SampleStudy(
        study_uid=f"{_ROOT}.9{seed}.1",
        patient_id="BENCH0001",
        patient_name="Bench^Volume",
        patient_birth_date="19700101",
        patient_sex="O",
        study_date="20240101",
        study_time="120000",
        accession_number="BENCH1",
        study_id="1",
        description="CT VOLUME",
        referring_physician="",
        series=(series,),
    )
    rng = np.random.default_rng(seed)
    for number in range(1, slices + 1):
        ds = _instance(study, series, number, rng)
        _add_image(ds, "CT", rows, columns, rng)
        ds.SliceLocation = float(number)
        ds.ImagePositionPatient = [0.0, 0.0, float(number)]
        yield ds
