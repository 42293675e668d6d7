#!/usr/bin/env python3
# Makes the HEIC fixtures in tests/fixtures/ (see tests/fixtures/README.md) with libheif and x265, as phones'
# and converters' files are made: the pixels and EXIF of cat-gps-rotated.jpg, which make-fixtures.py writes.
#
# Pinned deps (tested with Python 3.11): pillow-heif==1.8.1 (libheif 1.23.6, x265 4.3) Pillow==12.1.1
#
#   python3 -m venv /tmp/fxvenv
#   /tmp/fxvenv/bin/pip install pillow-heif==1.8.1 Pillow==12.1.1
#   /tmp/fxvenv/bin/python scripts/make-heic-fixtures.py [OUT_DIR]
import os
import sys

import pillow_heif
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "tests", "fixtures")
SECRET_XMP = (
    b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
    b'<rdf:Description xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:description>UpshotSecretXmp'
    b"</dc:description></rdf:Description></rdf:RDF></x:xmpmeta>"
)

source = Image.open(os.path.join(ROOT, "tests", "fixtures", "cat-gps-rotated.jpg"))
exif = source.getexif()
# The pixels as the JPEG stores them (sideways); libheif turns its EXIF orientation (6) into the container's
# rotation (irot), as iPhones store theirs, so that the photo shows upright, 300x451.
sideways = pillow_heif.from_bytes(mode="RGB", size=source.size, data=source.convert("RGB").tobytes())
sideways.save(os.path.join(OUT, "cat-gps.heic"), quality=80, exif=exif.tobytes(), xmp=SECRET_XMP)
