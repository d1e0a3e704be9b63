"""The codes the pages choose from or compare against (photo kinds, result statuses, roles, member
statuses), so a page needs no import from the storage or verification layers."""

from core.storage.schema import ADMIN, GALLERY, MEMBER_STATUSES, ROLES, VERIFICATION
from core.verification.result import AUTO_APPROVED, AUTO_REJECTED, FLAGGED, STATUSES

__all__ = [
    "ADMIN",
    "AUTO_APPROVED",
    "AUTO_REJECTED",
    "FLAGGED",
    "GALLERY",
    "MEMBER_STATUSES",
    "ROLES",
    "STATUSES",
    "VERIFICATION",
]
