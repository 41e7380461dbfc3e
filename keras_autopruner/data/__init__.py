"""Small real data sets shipped inside the package.

Nothing here is downloaded at run time: the files sit next to this module
so that tests, CI and a fresh install can train on real data offline. Use
`keras_autopruner.datasets` to load them; see `README.md` in this folder
for their provenance and licences.
"""
