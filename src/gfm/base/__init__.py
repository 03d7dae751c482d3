"""The foundation every other part of gfm stands on: typed errors and the text helpers of their messages
(errors), all-or-nothing file writes (atomic), the typed loader of plain mappings (schema), the bounded YAML
reader of params files (params_yaml) and purpose-named seeds (seeds).

May import: nothing of gfm but its version. Torch-free and cheap to import: the light commands load it.
"""
