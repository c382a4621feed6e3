"""What a run shows once trained (or while training):

spectra.py  relative log-amplitude spectra of every block's feature maps (Park & Kim 2022);
            the train loop's in-training spectra use it, the loop's one import from here
fourier.py  the Fourier analysis of a run's checkpoint: spectra, plots, npz
interpolation.py  compared runs' switch points, high-frequency values and accuracies: a table
            and the plot against the switch point (ConViT to the pure-conv ViT)
report.py   final and best accuracies of many runs: a table, a CSV and a plot
"""
