"""Partner profiles load from TOML and every error names the partner and the field."""

from __future__ import annotations

import pytest

from coexistence.edi.profiles import EdiConfigError, EdiSettings

ONE = '''
[[edi.partners]]
id = "ACME"
partner_isa = { qualifier = "ZZ", id = "ACMEBUY" }
our_isa = { qualifier = "ZZ", id = "DISTCO" }
partner_gs = "ACMEBUY"
our_gs = "DISTCO"
usage = "production"
asn_structure = "SOPI"
customers = ["10042", "10043"]
buyer_ids = { "ACME-E" = "10043" }
folder = "/srv/edi/acme"
'''


def test_a_profile_loads_from_a_whole_configuration_file():
    settings = EdiSettings.from_toml("[channels]\nx = 1\n" + ONE)
    [p] = settings.partners
    assert (p.isa15, p.asn_structure, p.separators.element) == ("P", "SOPI", "*")
    assert settings.owner_of("10043") is p and settings.owner_of("99") is None
    assert settings.by_sender("ZZ", "ACMEBUY") is p


@pytest.mark.parametrize(("change", "words"), [
    (('qualifier = "ZZ", id = "ACMEBUY"', 'qualifier = "ZZZ", id = "ACMEBUY"'),
     "edi partner ACME: field partner_isa.qualifier"),
    (('id = "DISTCO" }', 'id = "DISTCO-WAY-TOO-LONG" }'), "edi partner ACME: field our_isa.id"),
    (('usage = "production"', 'usage = "live"'), "edi partner ACME: field usage"),
    (('asn_structure = "SOPI"', 'asn_structure = "SOIP"'), "field asn_structure"),
    (('folder = "/srv/edi/acme"', 'element_separator = "A"\nfolder = "/x"'),
     "field element_separator"),
    (('"ACME-E" = "10043"', '"ACME-E" = "99999"'), "buyer_ids['ACME-E'] = '99999'"),
    (('customers = ["10042", "10043"]', 'customers = []'), "field customers"),
    (('folder = "/srv/edi/acme"\n', ''), "edi partner ACME: field folder"),
])
def test_a_bad_profile_names_partner_and_field(change, words):
    with pytest.raises(EdiConfigError) as err:
        EdiSettings.from_toml(ONE.replace(*change), source="coexist.toml")
    assert words in str(err.value) and str(err.value).startswith("coexist.toml: ")


def test_a_customer_belongs_to_one_partner_only():
    two = ONE + ONE.replace('id = "ACME"', 'id = "BETA"').replace('"ACMEBUY"', '"BETABUY"') \
        .replace("/srv/edi/acme", "/srv/edi/beta")
    with pytest.raises(EdiConfigError, match="partner BETA: customers: customer 10042 already "
                                             "belongs to partner ACME"):
        EdiSettings.from_toml(two)


def test_broken_toml_is_one_clear_line():
    with pytest.raises(EdiConfigError, match="x.toml: not valid TOML"):
        EdiSettings.from_toml("[[edi.partners]\n", source="x.toml")


@pytest.mark.parametrize(("change", "doc", "follows"), [
    ("", "855", ()),
    ("", "856", (("855", 60),)),
    ("", "810", (("856", 60), ("855", 60))),
    ("hold_for_855_minutes = 5\nhold_810_for_856_minutes = 30", "810",
     (("856", 30), ("855", 5))),
    ("hold_for_855_minutes = 0", "856", ()),
    ("hold_for_855_minutes = 0", "810", (("856", 60),)),
    ('receives = ["856", "810"]', "856", ()),
    ('receives = ["855", "810"]', "810", (("855", 60),)),
    ("hold_810_for_856_minutes = 0", "810", (("855", 60),)),
    ("", "997", ()),
])
def test_a_document_follows_the_earlier_documents_of_its_order_that_its_partner_receives(
        change, doc, follows):
    [p] = EdiSettings.from_toml(ONE + change + "\n").partners
    assert p.must_follow(doc) == follows


def test_a_negative_hold_for_the_855_names_the_field():
    with pytest.raises(EdiConfigError, match="edi partner ACME: field hold_for_855_minutes"):
        EdiSettings.from_toml(ONE + "hold_for_855_minutes = -1\n")
