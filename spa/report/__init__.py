"""The run report (``spa report``): one self-contained HTML page with a summary of the run on top, views of the
final map, and every stage's figures (their ``figures.json``) in pipeline order."""
