from rawfetch.cli import main

main()
