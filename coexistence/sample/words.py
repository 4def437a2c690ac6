"""Vocabulary of the sample distributor: names, streets, cities and products.

Deliberately mixed: plain ASCII, Latin-1 accents (French, German, Spanish
customers) and names longer than 30 characters, so that the legacy ERP's
upper-case fixed-width columns (and their truncation) are exercised.
Everything here is data; the generator picks from it with seeded RNGs.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Country:
    """Address and money conventions of one country the distributor sells in."""

    code: str
    currency: str
    #: Sales tax / VAT rate applied on invoices, as a decimal string.
    tax_rate: str
    #: Sales region (canonical ``Customer.region``, at most 10 characters).
    region: str
    #: (city, region/state, postal code prefix) triples.
    cities: tuple[tuple[str, str, str], ...]
    streets: tuple[str, ...]
    phone_prefix: str
    #: ``str.format`` pattern of a tax id over ``d2``, ``d6``, ``d7``, ``d9``, ``d11`` (ints
    #: of at most that many digits).
    tax_id_pattern: str


COUNTRIES: tuple[Country, ...] = (
    Country(
        "US", "USD", "0.0725", "NA-EAST",
        (("Atlanta", "GA", "303"), ("Charlotte", "NC", "282"), ("Newark", "NJ", "071"),
         ("Pittsburgh", "PA", "152"), ("Columbus", "OH", "432")),
        ("Peachtree Industrial Blvd", "Commerce Street", "Harbor Point Road", "Elm Avenue",
         "Old Mill Parkway"),
        "+1 404", "{d2:02d}-{d7:07d}",
    ),
    Country(
        "US", "USD", "0.0825", "NA-WEST",
        (("Dallas", "TX", "752"), ("Phoenix", "AZ", "850"), ("Reno", "NV", "895"),
         ("Sacramento", "CA", "958"), ("Portland", "OR", "972")),
        ("Distribution Way", "Mesa Verde Drive", "Industrial Loop", "Cactus Road",
         "Columbia Boulevard"),
        "+1 214", "{d2:02d}-{d7:07d}",
    ),
    Country(
        "CA", "CAD", "0.13", "NA-EAST",
        (("Montréal", "QC", "H2X"), ("Toronto", "ON", "M5V"), ("Québec", "QC", "G1R"),
         ("Mississauga", "ON", "L5B")),
        ("Rue Sainte-Catherine", "Boulevard René-Lévesque", "King Street West",
         "Chemin de la Côte-des-Neiges"),
        "+1 514", "{d9:09d}RT0001",
    ),
    Country(
        "MX", "MXN", "0.16", "LATAM",
        (("Monterrey", "NL", "640"), ("Querétaro", "QRO", "760"), ("Guadalajara", "JAL", "441"),
         ("Ciudad de México", "CDMX", "060")),
        ("Avenida Constitución", "Calle Hidalgo", "Boulevard Díaz Ordaz",
         "Avenida Insurgentes Sur"),
        "+52 81", "ABC{d6:06d}X1",
    ),
    Country(
        "DE", "EUR", "0.19", "EMEA",
        (("München", "BY", "803"), ("Düsseldorf", "NW", "402"), ("Köln", "NW", "506"),
         ("Hamburg", "HH", "201")),
        ("Königsallee", "Hauptstraße", "Industriestraße", "Große Bleichen"),
        "+49 89", "DE{d9:09d}",
    ),
    Country(
        "FR", "EUR", "0.20", "EMEA",
        (("Lyon", "ARA", "690"), ("Saint-Étienne", "ARA", "420"), ("Orléans", "CVL", "450"),
         ("Nîmes", "OCC", "300")),
        ("Rue de la République", "Avenue Jean-Jaurès", "Quai Général-Sarrail",
         "Boulevard de l'Hôpital"),
        "+33 4", "FR{d11:011d}",
    ),
    Country(
        "GB", "GBP", "0.20", "EMEA",
        (("Birmingham", "ENG", "B1"), ("Leeds", "ENG", "LS1"), ("Glasgow", "SCT", "G2"),
         ("Bristol", "ENG", "BS1")),
        ("Broad Street", "Wellington Road", "Canal Side", "Victoria Industrial Estate"),
        "+44 121", "GB{d9:09d}",
    ),
)

#: Relative weight of each entry of ``COUNTRIES`` (the distributor is mostly North American).
COUNTRY_WEIGHTS: tuple[int, ...] = (30, 30, 12, 10, 7, 6, 5)

NAME_FIRST: tuple[str, ...] = (
    "Northwind", "Acme", "Summit", "Blue Ridge", "Great Lakes", "Pacific", "Keystone",
    "Riverside", "Ironwood", "Silver Creek", "Lone Star", "Harbor", "Prairie", "Granite",
    "Evergreen", "Tri-County", "Apex", "Frontier", "Cascade", "Heartland",
)
NAME_TRADE: tuple[str, ...] = (
    "Industrial", "Plumbing", "Electrical", "Mechanical", "HVAC", "Hardware", "Fastener",
    "Safety", "Janitorial", "Building", "Fluid Power", "Packaging",
)
NAME_KIND: tuple[str, ...] = (
    "Supply", "Supply Company", "Distributors", "Wholesale", "Services", "Contractors",
    "Partners", "Solutions Group",
)
NAME_SUFFIX: tuple[str, ...] = ("Inc.", "LLC", "Corp.", "Co.", "Ltd", "")

#: Names in the local language, chosen for customers outside the US.
LOCAL_NAMES: dict[str, tuple[str, ...]] = {
    "CA": ("Quincaillerie Générale du Québec", "Matériaux Lévesque et Frères",
           "Électricité Côté Inc.", "Plomberie Bélanger"),
    "MX": ("Ferretería Industrial del Norte S.A. de C.V.", "Suministros Eléctricos Peña",
           "Distribuidora Ñandú", "Tornillería Querétaro"),
    "DE": ("Müller & Söhne Industriebedarf GmbH", "Schäfer Werkzeuge", "Gebrüder Weiß KG",
           "Bürotechnik Köhler"),
    "FR": ("Société Lyonnaise de Quincaillerie", "Établissements Hervé Frères",
           "Électro-Dépôt Rhône", "Outillage Nîmois"),
    "GB": ("Brompton & Hale Engineering Supplies Ltd", "O'Connell Fixings", "Thames Valley Tools",
           "Highland Safety Wear"),
}

FIRST_NAMES: tuple[str, ...] = (
    "Maria", "James", "José", "Chloé", "Jürgen", "Aoife", "Priya", "Liam", "Zoë", "Renée",
    "Mateo", "Hannah", "Björn", "Ana", "Noah", "Océane",
)
LAST_NAMES: tuple[str, ...] = (
    "García", "Smith", "Nguyen", "Müller", "Dubois", "O'Brien", "Kowalski", "Patel",
    "Lefèvre", "Johnson", "Hernández", "Schröder", "Brown", "Côté",
)

SITE_KINDS: tuple[str, ...] = ("Distribution Center", "Warehouse", "Branch", "Job Site", "Plant")

CUSTOMER_GROUPS: tuple[str, ...] = ("RETAIL", "WHOLESALE", "OEM", "CONTRACTOR", "GOVT", "MRO")

#: (SKU family prefix, product nouns, sizes) for the product catalogue.
PRODUCT_FAMILIES: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("FST", ("Hex Bolt", "Lag Screw", "Flat Washer", "Nylon Lock Nut", "Wedge Anchor"),
     ("M8 x 40mm", "M10 x 60mm", "1/4-20 x 1 in", "3/8-16 x 2 in")),
    ("VLV", ("Ball Valve", "Check Valve", "Gate Valve", "Válvula de Bola"),
     ("1/2 in NPT", "3/4 in NPT", "1 in NPT", "2 in Flanged")),
    ("ELE", ("Cable THHN", "Circuit Breaker", "Junction Box", "Câble Électrique"),
     ("12 AWG", "14 AWG", "20 A", "4 x 4 in")),
    ("SAF", ("Safety Glasses", "Nitrile Gloves", "Hard Hat", "Hi-Vis Vest"),
     ("Size M", "Size L", "Size XL", "One Size")),
    ("PMP", ("Sump Pump", "Circulator Pump", "Diaphragm Pump"), ("1/3 HP", "1/2 HP", "1 HP")),
    ("WID", ("Widget", "Mounting Bracket", "Mounting Plate"), ("Small", "Medium", "Large")),
)
PRODUCT_MATERIALS: tuple[str, ...] = (
    "Stainless Steel", "Galvanized", "Brass", "Zinc-Plated", "PVC", "Cast Iron", "Aluminium",
)
PRODUCT_PACKS: tuple[str, ...] = ("", "", ", Box of 100", ", Case of 12", ", Pallet of 40")

CARRIERS: tuple[str, ...] = ("UPS", "FedEx Freight", "DHL Express", "XPO Logistics",
                             "Old Dominion", "Estes Express")
