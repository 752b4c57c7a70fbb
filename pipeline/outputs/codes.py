"""Every coded concept the result objects use, defined once.

Why here: the SEG segments, the SR measurement groups and the readers in the
tests must agree on the same codes; a second copy would drift.

Choices:

- Category of all segments: SCT 49755003 "Morphologically Altered Structure"
  (CID 7150 Segmentation Property Categories).
- NCR and ED: SCT 6574001 "Necrosis" and SCT 79654002 "Edema".
- ET: SNOMED CT has no concept for "enhancing tumour"; NCIt C113842 "Enhancing
  Lesion" is the code the DICOM standard itself uses for it (PS3.16, the
  RANO/lesion-enhancement code lists), so it is used rather than a private code.
- WT and TC have no code in any standard terminology (they are BraTS evaluation
  regions, not findings); they get codes in a private scheme ``99SEGNODE``
  (private designators start with "99", PS3.16 8.2), which every SR that uses
  them declares in its Coding Scheme Identification Sequence.
- Volume: SCT 118565006 "Volume"; unit UCUM "ml". Area: SCT 42798000 "Area"; UCUM "mm2"
  (the SR's per-region outline on its largest slice; OHIF maps "mm2" to "mm²").
- Labels a viewer shows: DCM 121106 "Comment" (TEXT), the item OHIF 3.13 and Cornerstone
  read as a measurement's label.
- Quality flags (the SR's TID 1500 "Qualitative Evaluations", UMLS C0034375): each check is
  a ``99SEGNODE`` concept whose code value is the check's own value in the job record
  (``QaCheck``; values longer than 16 characters go into Long Code Value, which highdicom
  chooses); a raised flag is coded SCT 52101004 "Present" and its summary follows as TEXT
  under the same concept. "Review recommended" (``99SEGNODE`` "review") is SCT Yes/No.
"""

from __future__ import annotations

from types import MappingProxyType

from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from segnode.pipeline.quality.record import CHECK_TITLES, QaCheck
from segnode.vocabulary import Region

PRIVATE_SCHEME = "99SEGNODE"

MORPHOLOGICALLY_ALTERED_STRUCTURE = Code("49755003", "SCT", "Morphologically Altered Structure")
NECROSIS: Code = codes.SCT.Necrosis
EDEMA: Code = codes.SCT.Edema
ENHANCING_TUMOUR: Code = codes.NCIt.EnhancingLesion
TUMOUR_CORE = Code("TC", PRIVATE_SCHEME, "Tumor core (necrosis and enhancing tumor)")
WHOLE_TUMOUR = Code("WT", PRIVATE_SCHEME, "Whole tumor (necrosis, edema, enhancing tumor)")

#: The coded property type of each region (SEG segments and SR finding types).
REGION_CODES: MappingProxyType[Region, Code] = MappingProxyType(
    {
        Region.NCR: NECROSIS,
        Region.ED: EDEMA,
        Region.ET: ENHANCING_TUMOUR,
        Region.TC: TUMOUR_CORE,
        Region.WT: WHOLE_TUMOUR,
    }
)

VOLUME: Code = codes.SCT.Volume
MILLILITRE = Code("ml", "UCUM", "milliliter")
AREA: Code = codes.SCT.Area
SQUARE_MILLIMETRE = Code("mm2", "UCUM", "square millimeter")
#: TEXT item whose value a viewer shows as the measurement's label (OHIF, Cornerstone).
COMMENT: Code = codes.DCM.Comment
#: Purpose of the point an empty region's display group hangs on: it marks no anatomy.
DISPLAY_ANCHOR = Code("anchor", PRIVATE_SCHEME, "Display position only (region is empty)")

#: TID 1500 row "Qualitative Evaluations" container.
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")
REVIEW_RECOMMENDED = Code("review", PRIVATE_SCHEME, "Review recommended")
QUALITY_SUMMARY = Code("qa_summary", PRIVATE_SCHEME, "Quality checks")
YES: Code = codes.SCT.Yes
NO: Code = codes.SCT.No
PRESENT: Code = codes.SCT.Present

#: The concept of each quality check (code value = the check's value in the job record).
QA_CHECK_CODES: MappingProxyType[QaCheck, Code] = MappingProxyType(
    {check: Code(check.value, PRIVATE_SCHEME, CHECK_TITLES[check]) for check in QaCheck}
)

#: Algorithm Family Code Sequence of the segmentation algorithm (CID 7162).
ALGORITHM_FAMILY: Code = codes.cid7162.ArtificialIntelligence
#: Procedure Reported of the TID 1500 report (LOINC "MR Brain").
PROCEDURE_REPORTED: Code = codes.LN.BrainMRI


def private_coding_scheme() -> CodingSchemeIdentificationItem:
    """The declaration of ``99SEGNODE`` that an object using its codes must carry."""
    return CodingSchemeIdentificationItem(
        designator=PRIVATE_SCHEME,
        name="segnode brain tumour regions and quality checks",
        responsible_organization="segnode",
    )
