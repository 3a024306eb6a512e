"""The persona-effect study: every task under a grid of persona conditions (``runner``), its
resumable record of finished work (``ledger``), effect tables (``effects``) and report."""
