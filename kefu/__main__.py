from kefu.cli import main

main()
