"""Figures no run measured, predicted from runs that were: the cost model (costmodel/), fitted on
a sweep's points and judged on the points it did not see (sweepreport.py), more decode steps than a
run measured (extrapolate.py), and the plan's testbed projected (project.py: the testbed and the
procedure in plantestbed.py, its checks on measured runs in projcheck.py, the pages in projpages.py,
projassume.py and projcalib.py). Every page these write says in its title that its figures are
predicted.
"""
