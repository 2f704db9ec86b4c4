"""What a run tells people: bounded summaries computed in the pipeline, the HTML report page,
what the run cost, and the few lines a command prints when it ends.

    summaries.py  CombineFns: error records by kind and input, model outputs' distributions,
                  throughput (and its bars, from the run's start)
    cost.py       run.json's `cost`: worker-seconds, records/s per vCPU, $ per million
                  predictions, from the machines and a price table (prices.yaml: examples)
    page.py       report.html, a pure function of run.json and those summaries
    quality_page.py  its data-quality section: the verdict, flagged features' plots, checks
    files_page.py    its inputs-and-outputs section: counts per input, links to the outputs
    plots.py      its plots of the run: histograms, throughput, values of text outputs
    markup.py     what the page's parts draw with: escaping, paths that wrap, times, SVG
    terminal.py   the summary a command prints
"""
