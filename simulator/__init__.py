"""The house simulator: believable load and PV profiles for the demo community."""
