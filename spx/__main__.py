from spx.cli import main

main()
