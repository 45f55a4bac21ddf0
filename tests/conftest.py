"""Shared test setup: everything the tests need is started by the tests themselves."""

import os

os.environ.setdefault("COLUMNS", "200")
