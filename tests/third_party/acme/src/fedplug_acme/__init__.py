"""ACME's fedplug plugin (a test fixture that behaves like any third party's distribution)."""
