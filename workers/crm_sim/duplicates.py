"""The org's Account duplicate rule and its matching rule.

Matching rule ``Coexist_Account_Match``: two accounts match when their company names are
equal after normalisation (case, accents, punctuation and the legal-form words Inc, Corp,
Co, LLC, Ltd... removed) and they share a billing postal code or a phone number (digits
only).  Duplicate rule ``Coexist_Account_Duplicates``: on create and on edit, a match
blocks the save with ``DUPLICATES_DETECTED`` unless the request carries
``Sforce-Duplicate-Rule-Header: allowSave=true``; an allowed save is reported as a
``DuplicateRecordSet`` with one ``DuplicateRecordItem`` per record.

This is the CRM's own rule, written apart from coexist's onboarding matcher
(``coexistence.crm.onboarding``) on purpose: the two are different systems, and a shared
function would hide a disagreement between them.
"""

from __future__ import annotations

import re
import unicodedata

MATCHING_RULE = "Coexist_Account_Match"
DUPLICATE_RULE = "Coexist_Account_Duplicates"
DUPLICATE_MESSAGE = ("You're creating a duplicate record. We recommend you use an existing "
                     "record instead.")

_LEGAL_FORMS = frozenset({"inc", "incorporated", "corp", "corporation", "co", "company",
                          "llc", "ltd", "limited", "plc", "lp", "llp"})
_NON_WORD = re.compile(r"[^0-9a-z]+")


def name_key(name: str | None) -> str:
    """The company name as the matching rule compares it."""
    if not name:
        return ""
    folded = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode().lower()
    folded = folded.replace("&", " and ")
    words = [w for w in _NON_WORD.split(folded) if w and w not in _LEGAL_FORMS]
    return " ".join(words)


def postal_key(postal: str | None) -> str:
    return re.sub(r"[\s-]", "", postal or "").upper()


def phone_key(phone: str | None) -> str:
    digits = re.sub(r"\D", "", phone or "")
    return digits[-10:]


def keys_of(doc: dict) -> tuple[str, str, str]:
    return (name_key(doc.get("Name")), postal_key(doc.get("BillingPostalCode")),
            phone_key(doc.get("Phone")))


def matches(a: tuple[str, str, str], b: tuple[str, str, str]) -> bool:
    """Same name key, and the same postal code or the same phone (empty never matches)."""
    if not a[0] or a[0] != b[0]:
        return False
    return bool((a[1] and a[1] == b[1]) or (a[2] and a[2] == b[2]))


def duplicate_error(api_version: str, match_ids: list[str]) -> dict:
    """The error entry of a blocked save, as the REST API and sObject Collections show it."""
    return {
        "duplicateResult": {
            "allowSave": False,
            "duplicateRule": DUPLICATE_RULE,
            "duplicateRuleEntityType": "Account",
            "errorMessage": DUPLICATE_MESSAGE,
            "matchResults": [{
                "entityType": "Account",
                "errors": [],
                "matchEngine": "ExactMatchEngine",
                "matchRecords": [{
                    "additionalInformation": [],
                    "fieldDiffs": [],
                    "matchConfidence": 100.0,
                    "record": {
                        "attributes": {"type": "Account",
                                       "url": f"/services/data/v{api_version}/sobjects/"
                                              f"Account/{id_}"},
                        "Id": id_,
                    },
                } for id_ in match_ids],
                "rule": MATCHING_RULE,
                "size": len(match_ids),
                "success": True,
            }],
        },
        "errorCode": "DUPLICATES_DETECTED",
        "message": DUPLICATE_MESSAGE,
    }
