from litdistill.cli import main

main()
