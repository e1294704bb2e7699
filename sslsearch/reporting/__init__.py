"""What a sweep hands back: the sweep's summary (``summary``), the confirmation in words
(``confirm_report``), the method comparison's tables and report (``compare_table``, ``report``),
the exported encoders (``export``; loaded by ``sslsearch.load_encoder``) and the versions that
produced them (``provenance``).

They import the floors below (the ground floor, the trial floor, the search) and never the
commands that call them (docs/design.md; tests/test_layout.py checks it).
"""
