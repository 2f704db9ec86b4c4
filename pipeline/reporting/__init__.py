"""What a run tells people: bounded summaries computed in the pipeline, the HTML report page,
and the few lines a command prints when it ends.

    summaries.py  CombineFns: error records by kind, model outputs' distributions, throughput
    page.py       report.html, a pure function of run.json and those summaries
    quality_page.py  its data-quality section: the verdict, flagged features' plots, checks
    markup.py     what both draw with: escaping, numbers, SVG
    terminal.py   the summary a command prints
"""
